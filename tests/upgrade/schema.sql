-- A description of everything the zdm extension owns, independent of
-- creation order: run in a database where zdm was created fresh and in one
-- where it was upgraded, the outputs must be equal.
\pset format unaligned
\pset tuples_only on
SELECT 'member: ' || pg_catalog.pg_describe_object(classid, objid, objsubid)
  FROM pg_catalog.pg_depend
 WHERE refclassid = 'pg_catalog.pg_extension'::regclass AND deptype = 'e'
   AND refobjid = (SELECT oid FROM pg_catalog.pg_extension WHERE extname = 'zdm')
   -- a #[pg_test] build (cargo pgrx test installs one) adds schema tests
   AND pg_catalog.pg_describe_object(classid, objid, objsubid) !~ '^(schema tests|function tests\.)'
 ORDER BY 1;
SELECT 'function: ' || concat_ws(' | ', p.oid::regprocedure, pg_catalog.pg_get_function_arguments(p.oid),
       pg_catalog.pg_get_function_result(p.oid), p.prosrc, p.probin, p.proconfig::text, p.provolatile, p.proisstrict,
       p.prosecdef, p.proparallel, p.proacl::text, pg_catalog.obj_description(p.oid, 'pg_proc'))
  FROM pg_catalog.pg_proc p WHERE p.pronamespace = 'zdm'::regnamespace ORDER BY 1;
SELECT 'column: ' || concat_ws(' | ', c.relname, a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod), a.attnotnull,
       pg_catalog.pg_get_expr(d.adbin, d.adrelid), a.attidentity, a.attgenerated, a.attcollation::regcollation)
  FROM pg_catalog.pg_attribute a
  JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
  LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
 WHERE c.relnamespace = 'zdm'::regnamespace AND a.attnum > 0 AND NOT a.attisdropped
 ORDER BY 1;
SELECT 'constraint: ' || concat_ws(' | ', conrelid::regclass, conname, pg_catalog.pg_get_constraintdef(oid))
  FROM pg_catalog.pg_constraint WHERE connamespace = 'zdm'::regnamespace ORDER BY 1;
SELECT 'index: ' || pg_catalog.pg_get_indexdef(i.indexrelid)
  FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid
 WHERE c.relnamespace = 'zdm'::regnamespace ORDER BY 1;
SELECT 'relation: ' || concat_ws(' | ', relname, relkind, relacl::text, relpersistence)
  FROM pg_catalog.pg_class WHERE relnamespace = 'zdm'::regnamespace ORDER BY 1;
SELECT 'view: ' || c.relname || ' | ' || pg_catalog.pg_get_viewdef(c.oid)
  FROM pg_catalog.pg_class c WHERE c.relnamespace = 'zdm'::regnamespace AND c.relkind = 'v' ORDER BY 1;
SELECT 'trigger: ' || concat_ws(' | ', tgrelid::regclass, tgname, pg_catalog.pg_get_triggerdef(oid))
  FROM pg_catalog.pg_trigger WHERE tgrelid IN (SELECT oid FROM pg_catalog.pg_class WHERE relnamespace = 'zdm'::regnamespace) AND NOT tgisinternal ORDER BY 1;
SELECT 'event trigger: ' || concat_ws(' | ', evtname, evtevent, evtfoid::regproc, evtenabled, evttags::text)
  FROM pg_catalog.pg_event_trigger ORDER BY 1;
SELECT 'schema: ' || concat_ws(' | ', nspname, nspacl::text) FROM pg_catalog.pg_namespace WHERE nspname = 'zdm';
SELECT 'dumped: ' || concat_ws(' | ', t.rel::regclass, t.cond)
  FROM pg_catalog.pg_extension e, unnest(e.extconfig, e.extcondition) AS t(rel, cond)
 WHERE e.extname = 'zdm' ORDER BY 1;
SELECT 'kind: ' || concat_ws(' | ', kind, adds_column, ready_step) FROM zdm.kinds ORDER BY 1;
SELECT 'extension: ' || concat_ws(' | ', extname, extversion, extrelocatable, extnamespace::regnamespace)
  FROM pg_catalog.pg_extension WHERE extname = 'zdm';
