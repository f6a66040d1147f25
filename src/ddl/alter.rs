//! ALTER TABLE: one step per subcommand, with PostgreSQL's lock level for
//! it (`AlterTableGetLockLevel`) and what it does under that lock. The
//! rules were checked against the server (relfilenode and seq_scan before
//! and after) on 15 and 18; tests/plan.rs keeps checking them.

use super::{Step, Work, cstr, list, lit, relation_sql, resolve, str_val};
use crate::locks::{self, Mode};
use crate::{compat, spi, subxact};
use pgrx::prelude::*;

pub fn analyse(stmt: *mut pg_sys::AlterTableStmt) -> Vec<Step> {
    unsafe {
        if (*stmt).objtype != pg_sys::ObjectType::OBJECT_TABLE {
            return Vec::new();
        }
        let Some(relid) = resolve((*stmt).relation) else {
            return Vec::new();
        };
        let relkind = pg_sys::get_rel_relkind(relid) as u8;
        if relkind != b'r' && relkind != b'p' {
            return Vec::new();
        }
        let inh = relkind == b'p' && (*(*stmt).relation).inh;
        let mut steps = Vec::new();
        for cmd in list::<pg_sys::AlterTableCmd>((*stmt).cmds) {
            let lock =
                pg_sys::AlterTableGetLockLevel(pg_sys::lappend(std::ptr::null_mut(), cmd.cast()))
                    as Mode;
            let recurse = inh && recurses((*cmd).subtype);
            for mut step in command(relid, cmd, lock) {
                step.recurse = step.relid == relid && recurse;
                steps.push(step);
            }
        }
        steps
    }
}

/// Subcommands PostgreSQL applies to every partition too (ATPrepCmd's
/// recursion), locking them in the same mode; the others (ATTACH, DETACH,
/// SET TABLESPACE …) lock the partitioned table alone.
#[allow(non_upper_case_globals)]
fn recurses(subtype: pg_sys::AlterTableType::Type) -> bool {
    use pg_sys::AlterTableType::*;
    matches!(
        subtype,
        AT_AddColumn
            | AT_DropColumn
            | AT_AlterColumnType
            | AT_SetNotNull
            | AT_DropNotNull
            | AT_ColumnDefault
            | AT_AddConstraint
            | AT_ValidateConstraint
            | AT_DropConstraint
    )
}

/// A column of the table: (attnum, type, typmod, collation, NOT NULL holds).
/// On 18 a NOT VALID not-null constraint sets attnotnull without holding.
fn attribute(relid: pg_sys::Oid, name: &str) -> Option<(i16, pg_sys::Oid, i32, pg_sys::Oid, bool)> {
    spi::read_first_row(
        "SELECT a.attnum, a.atttypid, a.atttypmod, a.attcollation, \
                a.attnotnull AND NOT EXISTS (SELECT FROM pg_catalog.pg_constraint co WHERE co.conrelid = a.attrelid \
                     AND co.contype = 'n' AND co.conkey[1] = a.attnum AND NOT co.convalidated) \
           FROM pg_catalog.pg_attribute a WHERE a.attrelid = $1 AND a.attname = $2 AND a.attnum > 0 AND NOT a.attisdropped",
        &[relid.into(), name.into()],
        |r| {
            Ok((
                r.get::<i16>(1)?.unwrap_or(0),
                r.get::<pg_sys::Oid>(2)?.unwrap_or(pg_sys::InvalidOid),
                r.get::<i32>(3)?.unwrap_or(-1),
                r.get::<pg_sys::Oid>(4)?.unwrap_or(pg_sys::InvalidOid),
                r.get::<bool>(5)?.unwrap_or(false),
            ))
        },
    )
}

/// A TypeName resolved (None: no such type; PostgreSQL will say so).
fn type_of(tn: *mut pg_sys::TypeName) -> Option<(pg_sys::Oid, i32)> {
    if tn.is_null() {
        return None;
    }
    subxact::attempt(|| unsafe {
        let mut typid = pg_sys::InvalidOid;
        let mut typmod = -1;
        pg_sys::typenameTypeIdAndMod(std::ptr::null_mut(), tn, &mut typid, &mut typmod);
        (typid, typmod)
    })
    .ok()
}

fn type_sql(typid: pg_sys::Oid, typmod: i32) -> String {
    cstr(unsafe { pg_sys::format_type_with_typemod(typid, typmod) })
}

/// The name of a `serial` pseudo-type (which means a sequence default).
fn is_serial(tn: *mut pg_sys::TypeName) -> bool {
    unsafe {
        let names = list::<pg_sys::Node>((*tn).names);
        names.len() == 1
            && matches!(
                str_val(names[0]).as_str(),
                "serial" | "serial2" | "serial4" | "serial8" | "smallserial" | "bigserial"
            )
    }
}

/// A raw expression transformed as PostgreSQL transforms it in `kind`,
/// against the table's row when `relid` is given (under a conditional
/// ACCESS SHARE lock: nothing waits here). None: it cannot be analysed now
/// (an error PostgreSQL will report, or the table locked by someone else).
fn transformed(
    relid: Option<pg_sys::Oid>,
    raw: *mut pg_sys::Node,
    kind: pg_sys::ParseExprKind::Type,
) -> Option<(*mut pg_sys::Node, *mut pg_sys::ParseState)> {
    if raw.is_null() {
        return None;
    }
    // A lock taken only for this is given back at once: holding it to the
    // end of the transaction could make the statement's own ACCESS
    // EXCLUSIVE an upgrade (a deadlock between two sessions running the same
    // migration), and would let zdm.plan's caller hold any table.
    let mut taken = false;
    if let Some(relid) = relid {
        if !unsafe { pg_sys::CheckRelationOidLockedByMe(relid, pg_sys::AccessShareLock as _, true) } {
            if !unsafe { pg_sys::ConditionalLockRelationOid(relid, pg_sys::AccessShareLock as _) } {
                return None;
            }
            taken = true;
        }
    }
    let result = subxact::attempt(|| unsafe {
        let pstate = pg_sys::make_parsestate(std::ptr::null_mut());
        if let Some(relid) = relid {
            let rel = pg_sys::relation_open(relid, pg_sys::NoLock as _);
            let ns = pg_sys::addRangeTableEntryForRelation(
                pstate,
                rel,
                pg_sys::AccessShareLock as _,
                std::ptr::null_mut(),
                false,
                true,
            );
            pg_sys::addNSItemToQuery(pstate, ns, false, true, true);
            pg_sys::relation_close(rel, pg_sys::NoLock as _);
        }
        let copy = pg_sys::copyObjectImpl(raw.cast()) as *mut pg_sys::Node;
        (pg_sys::transformExpr(pstate, copy, kind), pstate)
    })
    .ok();
    if let (true, Some(relid)) = (taken, relid) {
        unsafe { pg_sys::UnlockRelationOid(relid, pg_sys::AccessShareLock as _) };
    }
    result
}

fn deparse(expr: *mut pg_sys::Node, relid: Option<pg_sys::Oid>) -> Option<String> {
    subxact::attempt(|| unsafe {
        let ctx = match relid {
            Some(relid) => pg_sys::deparse_context_for(pg_sys::get_rel_name(relid), relid),
            None => std::ptr::null_mut(),
        };
        crate::security::deparse_pinned(|| {
            cstr(pg_sys::deparse_expression(expr, ctx, false, false))
        })
    })
    .ok()
}

#[allow(non_upper_case_globals)]
fn command(relid: pg_sys::Oid, cmd: *mut pg_sys::AlterTableCmd, lock: Mode) -> Vec<Step> {
    use pg_sys::AlterTableType::*;
    let tbl = relation_sql(relid);
    let name = cstr(unsafe { (*cmd).name });
    let qname = spi::ident(&name);
    let def = unsafe { (*cmd).def };
    let step = |action: String, work: Work| Step::new(action, relid, lock, work);
    match unsafe { (*cmd).subtype } {
        AT_AddColumn => add_column(relid, &tbl, def as *mut pg_sys::ColumnDef, lock),
        AT_DropColumn => vec![
            step(format!("drop column {qname}"), Work::Catalog)
                .note("the column's space is reclaimed by later writes, not now"),
        ],
        AT_AlterColumnType => vec![alter_type(
            relid,
            &tbl,
            &name,
            def as *mut pg_sys::ColumnDef,
            lock,
        )],
        AT_SetNotNull => vec![set_not_null(relid, &tbl, &name, lock)],
        AT_DropNotNull => vec![step(format!("drop NOT NULL on {qname}"), Work::Catalog)],
        AT_ColumnDefault => vec![
            step(format!("set or drop the default of {qname}"), Work::Catalog)
                .note("applies to rows written from now on; existing rows keep their values"),
        ],
        AT_AddConstraint => add_constraint(relid, &tbl, def as *mut pg_sys::Constraint, lock),
        AT_ValidateConstraint => vec![step(format!("validate constraint {qname}"), Work::Scan)],
        AT_DropConstraint => vec![step(format!("drop constraint {qname}"), Work::Catalog)],
        AT_SetTableSpace => {
            let target = unsafe { pg_sys::get_tablespace_oid((*cmd).name, true) };
            let mut current = unsafe { pg_sys::get_rel_tablespace(relid) };
            if current == pg_sys::InvalidOid {
                current = unsafe { pg_sys::MyDatabaseTableSpace };
            }
            let work = if target == current || (target == pg_sys::InvalidOid) {
                Work::Catalog
            } else {
                Work::Copy
            };
            vec![step(format!("move the table to tablespace {qname}"), work)
                .note("no online way in zdm: pg_repack or pg_squeeze move a table without a long lock")]
        }
        AT_SetLogged | AT_SetUnLogged => {
            vec![step("change the table's persistence".into(), Work::Rewrite)]
        }
        AT_SetAccessMethod => vec![step(
            "change the table's access method".into(),
            Work::Rewrite,
        )],
        AT_AttachPartition => attach(relid, def as *mut pg_sys::PartitionCmd, lock),
        AT_DetachPartition => {
            let part = unsafe { (*(def as *mut pg_sys::PartitionCmd)).name };
            let concurrent = unsafe { (*(def as *mut pg_sys::PartitionCmd)).concurrent };
            let mut out = vec![step("detach a partition".into(), Work::Catalog)];
            if let Some(p) = resolve(part) {
                let mode = if concurrent {
                    locks::SHARE_UPDATE_EXCLUSIVE
                } else {
                    locks::ACCESS_EXCLUSIVE
                };
                out.push(Step::new("detach this partition", p, mode, Work::Catalog));
            }
            out
        }
        _ => vec![step("change the table's definition".into(), Work::Catalog)],
    }
}

#[allow(non_upper_case_globals)]
fn add_column(relid: pg_sys::Oid, tbl: &str, col: *mut pg_sys::ColumnDef, lock: Mode) -> Vec<Step> {
    let colname = cstr(unsafe { (*col).colname });
    let qcol = spi::ident(&colname);
    let tn = unsafe { (*col).typeName };
    let resolved = type_of(tn);
    let type_text = resolved
        .map(|(t, m)| type_sql(t, m))
        .unwrap_or_else(|| "<type>".into());
    let mut default: Option<*mut pg_sys::Node> =
        unsafe { (!(*col).raw_default.is_null()).then_some((*col).raw_default) };
    let (mut not_null, mut identity, mut stored, mut check, mut unique, mut fk) = (
        unsafe { (*col).is_not_null },
        false,
        false,
        false,
        false,
        false,
    );
    for c in list::<pg_sys::Constraint>(unsafe { (*col).constraints }) {
        use pg_sys::ConstrType::*;
        match unsafe { (*c).contype } {
            CONSTR_DEFAULT => default = unsafe { Some((*c).raw_expr) },
            CONSTR_NOTNULL => not_null = true,
            CONSTR_IDENTITY => identity = true,
            CONSTR_GENERATED => stored = !compat::generated_is_virtual(c),
            CONSTR_CHECK => check = true,
            CONSTR_PRIMARY | CONSTR_UNIQUE | CONSTR_EXCLUSION => unique = true,
            CONSTR_FOREIGN => fk = true,
            _ => {}
        }
    }
    let domain_checks = resolved.is_some_and(|(t, _)| unsafe { pg_sys::DomainHasConstraints(t) });
    let default_expr = default
        .and_then(|raw| transformed(None, raw, pg_sys::ParseExprKind::EXPR_KIND_COLUMN_DEFAULT));
    let volatile =
        default_expr.is_some_and(|(e, _)| unsafe { pg_sys::contain_volatile_functions(e) });
    let default_text = default_expr.and_then(|(e, _)| deparse(e, None));
    let null_default = default.is_none();
    let action = format!("add column {qcol} {type_text}");
    let mut steps = Vec::new();
    let rewrite_why = if identity || is_serial(tn) {
        Some("its values come from a sequence")
    } else if stored {
        Some("a stored generated column is computed for every row")
    } else if domain_checks {
        Some("its domain has constraints, checked on every row")
    } else if volatile {
        Some("its default is volatile, evaluated for every row")
    } else {
        None
    };
    let mut alt = format!(
        "SELECT zdm.add_column({}, {}, {}",
        lit(tbl),
        lit(&colname),
        lit(&type_text)
    );
    if let Some(d) = &default_text {
        alt.push_str(&format!(", default_expr => {}", lit(d)));
    }
    if not_null {
        alt.push_str(", not_null => true");
    }
    alt.push(')');
    if let Some(why) = rewrite_why {
        let mut s = Step::new(action.clone(), relid, lock, Work::Rewrite)
            .note(format!("rewrites the table: {why}"));
        if !stored && !identity && !is_serial(tn) && !domain_checks {
            s = s.alternative(alt.clone());
        }
        steps.push(s);
    } else {
        let note = if default.is_some() {
            "the default is stored in the catalog (no rewrite)"
        } else {
            "no rewrite"
        };
        steps.push(Step::new(action.clone(), relid, lock, Work::Catalog).note(note));
        if not_null && null_default {
            steps.push(
                Step::new(format!("verify {qcol} NOT NULL"), relid, lock, Work::Scan)
                    .note("every row is read: a new column without a default is NULL, so this fails unless the table is empty")
                    .alternative(format!("{alt} -- with a fill or default_expr")),
            );
        }
    }
    if check {
        steps.push(
            Step::new(
                format!("verify the CHECK on {qcol}"),
                relid,
                lock,
                Work::Scan,
            )
            .alternative(format!(
                "add the column, then SELECT zdm.add_check({}, '<name>', '<expression>')",
                lit(tbl)
            )),
        );
    }
    if unique {
        steps.push(Step::new(format!("build the index of the key on {qcol}"), relid, lock, Work::IndexBuild)
            .alternative(format!("add the column, then SELECT zdm.create_index('CREATE UNIQUE INDEX ON {} ({qcol})') and ADD CONSTRAINT … USING INDEX", tbl.replace('\'', "''"))));
    }
    if fk && !null_default {
        steps.push(Step::new(
            format!("validate the foreign key on {qcol}"),
            relid,
            lock,
            Work::Scan,
        ));
    }
    steps
}

/// Whether changing column `name` to `tn` (with `using`) rewrites the table,
/// decided as tablecmds.c does: build the conversion PostgreSQL would
/// build, plan it, and see whether anything but the column itself (through
/// binary relabelling, a constraint-free domain, or a time-zone-neutral
/// timestamp conversion) remains. None: PostgreSQL cannot convert without
/// a USING clause, or the expression cannot be analysed now.
pub fn type_change_rewrites(
    relid: pg_sys::Oid,
    name: &str,
    tn: *mut pg_sys::TypeName,
    using: *mut pg_sys::Node,
) -> Option<bool> {
    let (attnum, typid, typmod, collid, _) = attribute(relid, name)?;
    let (target, target_mod) = type_of(tn)?;
    let (expr, pstate) = if using.is_null() {
        let var =
            unsafe { pg_sys::makeVar(1, attnum, typid, typmod, collid, 0) } as *mut pg_sys::Node;
        (var, unsafe {
            pg_sys::make_parsestate(std::ptr::null_mut())
        })
    } else {
        transformed(
            Some(relid),
            using,
            pg_sys::ParseExprKind::EXPR_KIND_ALTER_COL_TRANSFORM,
        )?
    };
    let planned = subxact::attempt(|| unsafe {
        let t = pg_sys::coerce_to_target_type(
            pstate,
            expr,
            pg_sys::exprType(expr),
            target,
            target_mod,
            pg_sys::CoercionContext::COERCION_ASSIGNMENT,
            pg_sys::CoercionForm::COERCE_IMPLICIT_CAST,
            -1,
        );
        if t.is_null() {
            return std::ptr::null_mut();
        }
        pg_sys::assign_expr_collations(pstate, t);
        pg_sys::expression_planner(t.cast()) as *mut pg_sys::Node
    })
    .ok()?;
    if planned.is_null() {
        return None;
    }
    Some(requires_rewrite(planned, attnum))
}

fn requires_rewrite(mut expr: *mut pg_sys::Node, attnum: i16) -> bool {
    use pg_sys::NodeTag::*;
    unsafe {
        loop {
            match (*expr).type_ {
                T_Var if (*(expr as *mut pg_sys::Var)).varattno == attnum => return false,
                T_RelabelType => expr = (*(expr as *mut pg_sys::RelabelType)).arg.cast(),
                T_CoerceToDomain => {
                    let d = expr as *mut pg_sys::CoerceToDomain;
                    if pg_sys::DomainHasConstraints((*d).resulttype) {
                        return true;
                    }
                    expr = (*d).arg.cast();
                }
                T_FuncExpr => {
                    let f = expr as *mut pg_sys::FuncExpr;
                    let src = spi::read_one::<String>(
                        "SELECT prosrc FROM pg_catalog.pg_proc WHERE oid = $1 AND prolang = 12",
                        &[(*f).funcid.into()],
                    );
                    let tz_conversion = matches!(
                        src.as_deref(),
                        Some("timestamptz_timestamp" | "timestamp_timestamptz")
                    );
                    if !tz_conversion || pg_sys::TimestampTimestampTzRequiresRewrite() {
                        return true;
                    }
                    if (*f).args.is_null() || (*(*f).args).length < 1 {
                        return true;
                    }
                    expr = (*(*(*f).args).elements).ptr_value as *mut pg_sys::Node;
                }
                _ => return true,
            }
        }
    }
}

fn alter_type(
    relid: pg_sys::Oid,
    tbl: &str,
    name: &str,
    col: *mut pg_sys::ColumnDef,
    lock: Mode,
) -> Step {
    let qname = spi::ident(name);
    let tn = unsafe { (*col).typeName };
    let using = unsafe { (*col).raw_default };
    if attribute(relid, name).is_none() || type_of(tn).is_none() {
        return Step::new(
            format!("change the type of {qname}"),
            relid,
            lock,
            Work::Catalog,
        )
        .note("no such column or type: PostgreSQL will refuse the statement");
    }
    let type_text = type_of(tn)
        .map(|(t, m)| type_sql(t, m))
        .unwrap_or_else(|| "<type>".into());
    let action = format!("change the type of {qname} to {type_text}");
    let mut alt = format!(
        "SELECT zdm.expand_change_type({}, {}, {}",
        lit(tbl),
        lit(name),
        lit(&type_text)
    );
    if !using.is_null() {
        let text = transformed(
            Some(relid),
            using,
            pg_sys::ParseExprKind::EXPR_KIND_ALTER_COL_TRANSFORM,
        )
        .and_then(|(e, _)| deparse(e, Some(relid)))
        .unwrap_or_else(|| "<the USING expression>".into());
        alt.push_str(&format!(", using_expr => {}", lit(&text)));
    }
    alt.push(')');
    match type_change_rewrites(relid, name, tn, using) {
        Some(false) => Step::new(action, relid, lock, Work::Catalog)
            .note("binary-compatible: no rewrite (an index on the column is rebuilt only if its operator family changes)"),
        Some(true) => Step::new(action, relid, lock, Work::Rewrite)
            .note("every row is converted into a new file and the table's indexes are rebuilt")
            .alternative(alt),
        None => Step::new(action, relid, lock, Work::Rewrite)
            .note("assumed a rewrite: the conversion could not be analysed now (PostgreSQL may need a USING clause)")
            .alternative(alt),
    }
}

/// SET NOT NULL: catalog only when the column is NOT NULL already or a
/// valid CHECK implies it (PostgreSQL's own test), else a scan.
fn set_not_null(relid: pg_sys::Oid, tbl: &str, name: &str, lock: Mode) -> Step {
    let qname = spi::ident(name);
    let action = format!("set {qname} NOT NULL");
    let alt = format!("SELECT zdm.validate_not_null({}, {})", lit(tbl), lit(name));
    match not_null_needs_scan(relid, name) {
        Some(false) => Step::new(action, relid, lock, Work::Catalog).note("no scan: the column is NOT NULL already, or a valid CHECK (col IS NOT NULL) implies it"),
        _ => Step::new(action, relid, lock, Work::Scan).note("every row is read to verify it").alternative(alt),
    }
}

fn not_null_needs_scan(relid: pg_sys::Oid, name: &str) -> Option<bool> {
    let (attnum, typid, typmod, collid, not_null) = attribute(relid, name)?;
    if not_null {
        return Some(false);
    }
    subxact::attempt(|| unsafe {
        let rel = pg_sys::RelationIdGetRelation(relid);
        if rel.is_null() {
            return true;
        }
        let test =
            pg_sys::palloc0(std::mem::size_of::<pg_sys::NullTest>()) as *mut pg_sys::NullTest;
        (*test).xpr.type_ = pg_sys::NodeTag::T_NullTest;
        (*test).arg = pg_sys::makeVar(1, attnum, typid, typmod, collid, 0).cast();
        (*test).nulltesttype = pg_sys::NullTestType::IS_NOT_NULL;
        (*test).argisrow = false;
        (*test).location = -1;
        let implied = pg_sys::PartConstraintImpliedByRelConstraint(
            rel,
            pg_sys::lappend(std::ptr::null_mut(), test.cast()),
        );
        pg_sys::RelationClose(rel);
        !implied
    })
    .ok()
}

fn names(l: *mut pg_sys::List) -> Vec<String> {
    list::<pg_sys::Node>(l).into_iter().map(str_val).collect()
}

fn array_sql(cols: &[String]) -> String {
    format!(
        "ARRAY[{}]",
        cols.iter().map(|c| lit(c)).collect::<Vec<_>>().join(", ")
    )
}

#[allow(non_upper_case_globals)]
fn add_constraint(
    relid: pg_sys::Oid,
    tbl: &str,
    con: *mut pg_sys::Constraint,
    lock: Mode,
) -> Vec<Step> {
    use pg_sys::ConstrType::*;
    let c = unsafe { &*con };
    let conname = cstr(c.conname);
    let shown = if conname.is_empty() {
        String::new()
    } else {
        format!(" {}", spi::ident(&conname))
    };
    let validated = !c.skip_validation;
    match c.contype {
        CONSTR_CHECK => {
            // The expression's text only matters for the alternative.
            let expr = || {
                transformed(Some(relid), c.raw_expr, pg_sys::ParseExprKind::EXPR_KIND_CHECK_CONSTRAINT)
                    .and_then(|(e, _)| deparse(e, Some(relid)))
                    .unwrap_or_else(|| "<the CHECK expression>".into())
            };
            let name = if conname.is_empty() {
                format!("{}_check", cstr(unsafe { pg_sys::get_rel_name(relid) }))
            } else {
                conname.clone()
            };
            let step = Step::new(
                format!("add CHECK constraint{shown}"),
                relid,
                lock,
                if validated { Work::Scan } else { Work::Catalog },
            );
            if validated {
                vec![
                    step.note("every row is read to verify it")
                        .alternative(format!(
                            "SELECT zdm.add_check({}, {}, {})",
                            lit(tbl),
                            lit(&name),
                            lit(&expr())
                        )),
                ]
            } else {
                vec![step.note("NOT VALID: existing rows are checked later by VALIDATE CONSTRAINT, which blocks nothing")]
            }
        }
        CONSTR_NOTNULL => {
            let col = names(c.keys).into_iter().next().unwrap_or_default();
            let scan = validated && not_null_needs_scan(relid, &col) != Some(false);
            let step = Step::new(
                format!("add NOT NULL constraint{shown} on {}", spi::ident(&col)),
                relid,
                lock,
                if scan { Work::Scan } else { Work::Catalog },
            );
            if scan {
                vec![step.alternative(format!(
                    "SELECT zdm.validate_not_null({}, {})",
                    lit(tbl),
                    lit(&col)
                ))]
            } else {
                vec![step]
            }
        }
        CONSTR_FOREIGN => {
            let cols = names(c.fk_attrs);
            let refcols = names(c.pk_attrs);
            let pk = resolve(c.pktable);
            let mut alt = format!(
                "SELECT zdm.add_foreign_key({}, {}, {}, {}",
                lit(tbl),
                array_sql(&cols),
                lit(&pk
                    .map(relation_sql)
                    .unwrap_or_else(|| "<referenced table>".into())),
                array_sql(&refcols)
            );
            let on_delete = match c.fk_del_action as u8 {
                b'r' => Some("RESTRICT"),
                b'c' => Some("CASCADE"),
                b'n' => Some("SET NULL"),
                b'd' => Some("SET DEFAULT"),
                _ => None,
            };
            if let Some(a) = on_delete {
                alt.push_str(&format!(", on_delete => {}", lit(a)));
            }
            if !conname.is_empty() {
                alt.push_str(&format!(", constraint_name => {}", lit(&conname)));
            }
            alt.push(')');
            let work = if validated { Work::Scan } else { Work::Catalog };
            let mut first = Step::new(format!("add FOREIGN KEY{shown}"), relid, lock, work);
            first = if validated {
                first
                    .note("every row is checked against the referenced table")
                    .alternative(alt)
            } else {
                first.note("NOT VALID: checked later by VALIDATE CONSTRAINT, which blocks nothing")
            };
            let mut out = vec![first];
            if let Some(pk) = pk {
                out.push(
                    Step::new("lock the referenced table", pk, lock, Work::Catalog)
                        .locked_before_rights()
                        .note("its writes wait while the key is added"),
                );
            }
            out
        }
        CONSTR_PRIMARY | CONSTR_UNIQUE | CONSTR_EXCLUSION => {
            let kind = match c.contype {
                CONSTR_PRIMARY => "PRIMARY KEY",
                CONSTR_UNIQUE => "UNIQUE",
                _ => "EXCLUDE",
            };
            if !c.indexname.is_null() {
                return vec![Step::new(format!("add {kind}{shown} using index {}", spi::ident(&cstr(c.indexname))), relid, lock, Work::Catalog)
                    .note("the index exists: catalog only (a primary key also verifies NOT NULL on columns without it)")];
            }
            let cols = names(c.keys)
                .iter()
                .map(|k| spi::ident(k))
                .collect::<Vec<_>>()
                .join(", ");
            let mut step = Step::new(
                format!("add {kind}{shown}: build its index"),
                relid,
                lock,
                Work::IndexBuild,
            );
            if c.contype != CONSTR_EXCLUSION {
                let index = if conname.is_empty() {
                    "<name>".to_string()
                } else {
                    spi::ident(&conname)
                };
                let create = format!("CREATE UNIQUE INDEX {index} ON {tbl} ({cols})");
                step = step.alternative(format!(
                    "SELECT zdm.create_index({}); then ALTER TABLE {tbl} ADD CONSTRAINT {index} {kind} USING INDEX {index}",
                    lit(&create)
                ));
            }
            vec![step]
        }
        _ => vec![Step::new(
            format!("add constraint{shown}"),
            relid,
            lock,
            Work::Catalog,
        )],
    }
}

fn attach(relid: pg_sys::Oid, cmd: *mut pg_sys::PartitionCmd, lock: Mode) -> Vec<Step> {
    let mut out = vec![Step::new("attach a partition", relid, lock, Work::Catalog)];
    // tablecmds.c locks the default partition first (its constraint
    // changes; its rows are checked against the new bound), then the table.
    let default = spi::read_one::<pg_sys::Oid>(
        "SELECT partdefid FROM pg_catalog.pg_partitioned_table WHERE partrelid = $1 AND partdefid <> 0",
        &[relid.into()],
    );
    if let Some(d) = default {
        out.push(
            Step::new("verify the default partition holds no rows of the new bound", d, locks::ACCESS_EXCLUSIVE, Work::Scan)
                .note("skipped when the default partition's CHECK constraints exclude the bound")
                .locked_before_rights(),
        );
    }
    if let Some(part) = resolve(unsafe { (*cmd).name }) {
        out.push(
            Step::new("verify the partition's rows match its bound", part, locks::ACCESS_EXCLUSIVE, Work::Scan)
                .note("skipped when the partition's CHECK constraints imply its bound")
                .locked_before_rights()
                .alternative(format!(
                    "SELECT zdm.add_check({}, '<name>', '<the bound as an expression>') first; ATTACH then skips its scan",
                    lit(&relation_sql(part))
                )),
        );
    }
    out
}
