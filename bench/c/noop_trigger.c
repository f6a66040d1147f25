/*
 * The floor for the trigger benchmarks: a C BEFORE ROW trigger that returns
 * the row unchanged. Whatever a BEFORE ROW trigger costs beyond this is the
 * trigger's own work. Built by bench/trigger_shapes.sh (gcc + server headers).
 */
#include "postgres.h"
#include "fmgr.h"
#include "commands/trigger.h"

PG_MODULE_MAGIC;
PG_FUNCTION_INFO_V1(bench_noop_trigger);

Datum
bench_noop_trigger(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;

	if (TRIGGER_FIRED_BY_UPDATE(td->tg_event))
		return PointerGetDatum(td->tg_newtuple);
	return PointerGetDatum(td->tg_trigtuple);
}
