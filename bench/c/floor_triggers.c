/*
 * The floors for the trigger benchmarks, built by bench/trigger_shapes.sh
 * (gcc + server headers).
 *
 * bench_noop_trigger: a C BEFORE ROW trigger that returns the row unchanged.
 * Whatever a BEFORE ROW trigger costs beyond this is the trigger's own work.
 *
 * bench_set_trigger(from, to): a C BEFORE ROW trigger that copies column
 * `from` into column `to` on every row, with no comparison at all: what any
 * trigger that sets a value pays, since a BEFORE ROW trigger can only change
 * a column by returning a newly formed tuple (heap_modify_tuple_by_cols, as
 * PL/pgSQL's `NEW.b := NEW.a; RETURN NEW` does too).
 */
#include "postgres.h"
#include "fmgr.h"
#include "access/htup_details.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "utils/rel.h"

PG_MODULE_MAGIC;
PG_FUNCTION_INFO_V1(bench_noop_trigger);
PG_FUNCTION_INFO_V1(bench_set_trigger);

Datum
bench_noop_trigger(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;

	if (TRIGGER_FIRED_BY_UPDATE(td->tg_event))
		return PointerGetDatum(td->tg_newtuple);
	return PointerGetDatum(td->tg_trigtuple);
}

Datum
bench_set_trigger(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;
	TupleDesc	desc = RelationGetDescr(td->tg_relation);
	HeapTuple	row = TRIGGER_FIRED_BY_UPDATE(td->tg_event) ? td->tg_newtuple : td->tg_trigtuple;
	int		   *cols = (int *) fcinfo->flinfo->fn_extra;	/* from, to: looked up once per statement */
	Datum		value;
	bool		isnull;

	if (cols == NULL)
	{
		cols = MemoryContextAlloc(fcinfo->flinfo->fn_mcxt, 2 * sizeof(int));
		cols[0] = SPI_fnumber(desc, td->tg_trigger->tgargs[0]);
		cols[1] = SPI_fnumber(desc, td->tg_trigger->tgargs[1]);
		fcinfo->flinfo->fn_extra = cols;
	}
	value = heap_getattr(row, cols[0], desc, &isnull);
	return PointerGetDatum(heap_modify_tuple_by_cols(row, desc, 1, &cols[1], &value, &isnull));
}
