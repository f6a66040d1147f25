//! zdm's own calls (`SELECT zdm.expand_change_type(…)` …) as steps: each
//! brief lock, the background work that holds none, what a column change
//! will carry, and what expand or contract will refuse.

use super::{Step, Work, cstr, list, resolve, str_val};
use crate::introspect::{self, DependentKind};
use crate::locks;
use crate::spi;
use pgrx::prelude::*;

/// The arguments of a call written with constants: positional, then named.
struct Args {
    positional: Vec<Option<String>>,
    named: Vec<(String, Option<String>)>,
}

impl Args {
    fn get(&self, i: usize, name: &str) -> Option<String> {
        self.named
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.clone())
            .or_else(|| self.positional.get(i).cloned().flatten())
    }
}

fn constant(node: *mut pg_sys::Node) -> Option<String> {
    unsafe {
        match (*node).type_ {
            pg_sys::NodeTag::T_A_Const => {
                let c = node as *mut pg_sys::A_Const;
                if (*c).isnull {
                    return None;
                }
                let val = std::ptr::addr_of_mut!((*c).val) as *mut pg_sys::Node;
                match (*val).type_ {
                    pg_sys::NodeTag::T_String => Some(str_val(val)),
                    pg_sys::NodeTag::T_Integer => {
                        Some((*(val as *mut pg_sys::Integer)).ival.to_string())
                    }
                    pg_sys::NodeTag::T_Boolean => {
                        Some((*(val as *mut pg_sys::Boolean)).boolval.to_string())
                    }
                    _ => None,
                }
            }
            pg_sys::NodeTag::T_TypeCast => constant((*(node as *mut pg_sys::TypeCast)).arg),
            pg_sys::NodeTag::T_A_ArrayExpr => {
                let items: Vec<String> =
                    list::<pg_sys::Node>((*(node as *mut pg_sys::A_ArrayExpr)).elements)
                        .into_iter()
                        .filter_map(constant)
                        .collect();
                Some(items.join(","))
            }
            _ => None,
        }
    }
}

/// `SELECT zdm.<name>(…)`: the function's name and its arguments.
fn call(stmt: *mut pg_sys::SelectStmt) -> Option<(String, Args)> {
    unsafe {
        let targets = list::<pg_sys::ResTarget>((*stmt).targetList);
        if targets.len() != 1
            || (*targets[0]).val.is_null()
            || (*(*targets[0]).val).type_ != pg_sys::NodeTag::T_FuncCall
        {
            return None;
        }
        let f = (*targets[0]).val as *mut pg_sys::FuncCall;
        let names: Vec<String> = list::<pg_sys::Node>((*f).funcname)
            .into_iter()
            .map(str_val)
            .collect();
        if names.len() != 2 || names[0] != "zdm" {
            return None;
        }
        let mut args = Args {
            positional: Vec::new(),
            named: Vec::new(),
        };
        for a in list::<pg_sys::Node>((*f).args) {
            if (*a).type_ == pg_sys::NodeTag::T_NamedArgExpr {
                let n = a as *mut pg_sys::NamedArgExpr;
                args.named
                    .push((cstr((*n).name), constant((*n).arg.cast())));
            } else {
                args.positional.push(constant(a));
            }
        }
        Some((names[1].clone(), args))
    }
}

fn table(args: &Args, i: usize, name: &str) -> Option<pg_sys::Oid> {
    // Resolved as the call will resolve it: the session's search_path.
    let text = std::ffi::CString::new(args.get(i, name)?).ok()?;
    let names = crate::subxact::attempt(|| unsafe { crate::compat::qualified_name_list(&text) }).ok()?;
    resolve(unsafe { pg_sys::makeRangeVarFromNameList(names) })
}

fn expand(relid: pg_sys::Oid, what: &str) -> Step {
    Step::new(
        format!("expand: {what}"),
        relid,
        locks::ACCESS_EXCLUSIVE,
        Work::Catalog,
    )
    .online()
    .note("a brief lock, waited for at most zdm.lock_timeout per attempt and retried")
}

fn backfill(relid: pg_sys::Oid, what: &str) -> Step {
    Step::new(format!("backfill: {what}"), relid, locks::ROW_EXCLUSIVE, Work::Batches)
        .online()
        .note("short transactions in background workers, throttled by the workload; pause, resume, crash-safe")
}

fn contract(relid: pg_sys::Oid, what: &str) -> Step {
    Step::new(
        format!("contract: {what}"),
        relid,
        locks::ACCESS_EXCLUSIVE,
        Work::Catalog,
    )
    .online()
    .note("a brief lock when you call zdm.contract, after the backfill")
}

fn validate(relid: pg_sys::Oid, what: &str) -> Step {
    Step::new(
        format!("validate {what}"),
        relid,
        locks::SHARE_UPDATE_EXCLUSIVE,
        Work::Scan,
    )
    .online()
    .note("reads every row; blocks neither reads nor writes")
}

/// What a column change carries, and what expand or contract will refuse.
fn dependents(relid: pg_sys::Oid, column: &str) -> Vec<Step> {
    let Some(col) = introspect::column(relid, column) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for d in introspect::column_dependents(relid, col.attnum) {
        let step = match d.kind {
            DependentKind::Index { .. } | DependentKind::Key { .. } => Step::new(
                format!(
                    "carry {}: a concurrent build on the new column",
                    d.description
                ),
                relid,
                locks::SHARE_UPDATE_EXCLUSIVE,
                Work::IndexBuild,
            )
            .online(),
            DependentKind::SingleColumnCheck { .. } | DependentKind::ForeignKey { .. } => {
                validate(relid, &format!("{} (carried NOT VALID)", d.description))
            }
            DependentKind::Referencing => Step::new(
                format!("re-point {} at contract", d.description),
                relid,
                locks::SHARE_ROW_EXCLUSIVE,
                Work::Catalog,
            )
            .online(),
            DependentKind::NotCarried => Step::new(
                format!("blocker: {}", d.description),
                relid,
                locks::ACCESS_EXCLUSIVE,
                Work::Catalog,
            )
            .online()
            .note("contract refuses until it is recreated on the new column"),
            DependentKind::Blocking => Step::new(
                format!("refused: {}", d.description),
                relid,
                0,
                Work::Catalog,
            )
            .online()
            .note("expand refuses a column with this dependent"),
            _ => continue,
        };
        out.push(step);
    }
    out
}

pub fn analyse(stmt: *mut pg_sys::SelectStmt) -> Vec<Step> {
    let Some((name, args)) = call(stmt) else {
        return Vec::new();
    };
    let relid = table(&args, 0, "tbl");
    let t = relid.unwrap_or(pg_sys::InvalidOid);
    let arg = |i: usize, n: &str| args.get(i, n).unwrap_or_default();
    match name.as_str() {
        "expand_rename" => {
            let (old, new) = (arg(1, "old_column"), arg(2, "new_column"));
            let mut s = vec![expand(
                t,
                &format!(
                    "add column {} beside {} and the sync trigger",
                    spi::ident(&new),
                    spi::ident(&old)
                ),
            )];
            s.push(backfill(
                t,
                &format!("copy {} into {}", spi::ident(&old), spi::ident(&new)),
            ));
            s.extend(dependents(t, &old));
            s.push(contract(t, &format!("drop {}", spi::ident(&old))));
            s
        }
        "expand_change_type" => {
            let (col, ty) = (arg(1, "col"), arg(2, "new_type"));
            let mut s = vec![expand(
                t,
                &format!(
                    "add a shadow column of type {ty} beside {} and the convert trigger",
                    spi::ident(&col)
                ),
            )];
            s.push(backfill(
                t,
                &format!("convert {} into the shadow column", spi::ident(&col)),
            ));
            s.extend(dependents(t, &col));
            s.push(contract(
                t,
                &format!("swap the shadow column in for {}", spi::ident(&col)),
            ));
            s
        }
        "add_column" => {
            let col = arg(1, "col");
            let fills = args.get(3, "fill").is_some() || args.get(5, "default_expr").is_some();
            let mut s = vec![expand(
                t,
                &format!(
                    "add column {} (nullable, no rewrite) and its fill trigger",
                    spi::ident(&col)
                ),
            )];
            if fills {
                s.push(backfill(
                    t,
                    &format!(
                        "fill {} (skipped for a non-volatile default without a fill)",
                        spi::ident(&col)
                    ),
                ));
            }
            if args.get(4, "not_null").as_deref() == Some("true") {
                s.push(validate(t, &format!("{} NOT NULL", spi::ident(&col))));
            }
            s.push(contract(
                t,
                "drop the fill trigger, set the default and NOT NULL",
            ));
            s
        }
        "update_in_batches" => vec![backfill(t, &format!("UPDATE … SET {}", arg(1, "set")))],
        "validate_not_null" => {
            let col = arg(1, "col");
            vec![
                expand(
                    t,
                    &format!("add CHECK ({} IS NOT NULL) NOT VALID", spi::ident(&col)),
                ),
                validate(t, "the check"),
                contract(
                    t,
                    "SET NOT NULL (no scan: the valid check implies it), drop the check",
                )
                .note("a brief lock, in the same job"),
            ]
        }
        "add_check" => vec![
            expand(t, "add the CHECK NOT VALID"),
            validate(t, "the check"),
        ],
        "add_foreign_key" => {
            let mut s = vec![
                Step::new(
                    "add the FOREIGN KEY NOT VALID",
                    t,
                    locks::SHARE_ROW_EXCLUSIVE,
                    Work::Catalog,
                )
                .online()
                .note("a brief lock on both tables"),
            ];
            if let Some(r) = table(&args, 2, "ref_tbl") {
                s.push(
                    Step::new(
                        "add the FOREIGN KEY NOT VALID",
                        r,
                        locks::SHARE_ROW_EXCLUSIVE,
                        Work::Catalog,
                    )
                    .online(),
                );
            }
            s.push(validate(t, "the foreign key"));
            s
        }
        "create_index" => {
            let def = arg(0, "definition");
            let target = std::ffi::CString::new(def.clone()).ok().and_then(|c| {
                crate::subxact::attempt(|| unsafe {
                    let l = pg_sys::raw_parser(c.as_ptr(), pg_sys::RawParseMode::RAW_PARSE_DEFAULT);
                    let raw = list::<pg_sys::RawStmt>(l).into_iter().next()?;
                    let n = (*raw).stmt;
                    if (*n).type_ != pg_sys::NodeTag::T_IndexStmt {
                        return None;
                    }
                    resolve((*(n as *mut pg_sys::IndexStmt)).relation)
                })
                .ok()
                .flatten()
            });
            vec![
                Step::new(
                    "build the index concurrently (leaf by leaf on a partitioned table), retried",
                    target.unwrap_or_default(),
                    locks::SHARE_UPDATE_EXCLUSIVE,
                    Work::IndexBuild,
                )
                .online(),
            ]
        }
        "drop_index" => {
            let index = table(&args, 0, "index");
            let t = index
                .map(|i| unsafe { pg_sys::IndexGetRelation(i, true) })
                .unwrap_or_default();
            vec![
                Step::new(
                    "drop the index concurrently",
                    t,
                    locks::SHARE_UPDATE_EXCLUSIVE,
                    Work::Catalog,
                )
                .online(),
            ]
        }
        "contract" | "abort" => {
            let id = args
                .get(0, "migration")
                .and_then(|v| v.parse::<i64>().ok())
                .unwrap_or(0);
            let row = spi::read_first_row(
                "SELECT relid::pg_catalog.oid, kind, phase FROM zdm.migrations WHERE id = $1",
                &[id.into()],
                |r| {
                    Ok((
                        r.get::<pg_sys::Oid>(1)?.unwrap_or_default(),
                        r.get::<String>(2)?.unwrap_or_default(),
                        r.get::<String>(3)?.unwrap_or_default(),
                    ))
                },
            );
            let Some((t, kind, phase)) = row else {
                return vec![
                    Step::new(
                        format!("{name}: no migration {id}"),
                        pg_sys::InvalidOid,
                        0,
                        Work::Catalog,
                    )
                    .online(),
                ];
            };
            let mut step = Step::new(
                format!("{name} the {kind} migration {id} (now {phase})"),
                t,
                locks::ACCESS_EXCLUSIVE,
                Work::Catalog,
            )
            .online();
            if name == "contract" && phase != "backfilled" {
                step = step.note(format!(
                    "contract refuses until the backfill is done: the migration is {phase}"
                ));
            }
            vec![step]
        }
        _ => Vec::new(),
    }
    .into_iter()
    .map(|mut s| {
        if s.relid == pg_sys::InvalidOid && relid.is_none() && s.note.is_none() {
            s.note = Some("the table does not exist (yet)".into());
        }
        s
    })
    .collect()
}
