//! One analysis of DDL statements, shared by `zdm.plan` (which explains
//! them) and `zdm.safe_ddl` (which bounds their lock waits and stops
//! rewrites and blocking scans of large tables).
//!
//! The rules are PostgreSQL's own, asked of PostgreSQL where it exports
//! them: the lock level of ALTER TABLE subcommands is
//! `AlterTableGetLockLevel`; whether a type change rewrites is decided on
//! the conversion expression PostgreSQL itself would build and plan
//! (`alter::type_change_rewrites`, tablecmds.c's
//! ATColumnChangeRequiresRewrite); whether SET NOT NULL can skip its scan is
//! `PartConstraintImpliedByRelConstraint` on `col IS NOT NULL`. Nothing here
//! executes the statement or takes a lock a reader would wait for.
//!
//! `alter` (ALTER TABLE), `statements` (indexes, REINDEX, VACUUM FULL,
//! CLUSTER, RENAME), `calls` (zdm's own functions) turn a statement into
//! `Step`s; `live` adds what the server says now (sizes, estimates, who
//! holds a conflicting lock); `hook` is the ProcessUtility hook.

mod alter;
mod calls;
pub mod hook;
pub mod live;
mod statements;

use crate::locks::{self, Mode};
use crate::spi;
use pgrx::prelude::*;

/// The work done while the step's lock is held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Work {
    /// Only the catalog changes.
    Catalog,
    /// Every row is read (a constraint or NOT NULL is verified).
    Scan,
    /// Every row is written to a new file (and its indexes rebuilt).
    Rewrite,
    /// An index is built (a scan and a sort).
    IndexBuild,
    /// The files are copied (SET TABLESPACE).
    Copy,
    /// zdm's batches in the background: short transactions, no long lock.
    Batches,
}

impl Work {
    pub fn text(self) -> &'static str {
        match self {
            Work::Catalog => "catalog only",
            Work::Scan => "scan",
            Work::Rewrite => "rewrite",
            Work::IndexBuild => "index build",
            Work::Copy => "file copy",
            Work::Batches => "batches",
        }
    }

    /// Work proportional to the table's size.
    pub fn heavy(self) -> bool {
        matches!(
            self,
            Work::Scan | Work::Rewrite | Work::IndexBuild | Work::Copy
        )
    }
}

/// One step of a statement: what it does to which relation, under which lock.
#[derive(Clone, Debug)]
pub struct Step {
    pub action: String,
    /// The relation locked (InvalidOid: none, or not known yet).
    pub relid: pg_sys::Oid,
    pub lock: Mode,
    /// The lock is taken on every partition too.
    pub recurse: bool,
    pub work: Work,
    /// The zdm call (or plain statement) that does the same without a long lock.
    pub alternative: Option<String>,
    pub note: Option<String>,
    /// A step of zdm's own that does not hold its lock through its work
    /// (e.g. a brief lock, then batches).
    pub online: bool,
    /// PostgreSQL locks this relation before checking any right on it (a
    /// foreign key's referenced table, a partition being attached).
    pub locked_before_rights: bool,
}

impl Step {
    pub fn new(action: impl Into<String>, relid: pg_sys::Oid, lock: Mode, work: Work) -> Step {
        Step {
            action: action.into(),
            relid,
            lock,
            recurse: false,
            work,
            alternative: None,
            note: None,
            online: false,
            locked_before_rights: false,
        }
    }

    pub fn alternative(mut self, alt: impl Into<String>) -> Step {
        self.alternative = Some(alt.into());
        self
    }

    pub fn note(mut self, note: impl Into<String>) -> Step {
        self.note = Some(note.into());
        self
    }

    pub fn locked_before_rights(mut self) -> Step {
        self.locked_before_rights = true;
        self
    }

    pub fn online(mut self) -> Step {
        self.online = true;
        self
    }

    /// Heavy work under a lock that stops the application's writes: what
    /// safe_ddl stops on a large table.
    pub fn blocking_work(&self) -> bool {
        !self.online && self.work.heavy() && locks::blocks_writes(self.lock)
    }
}

/// A statement as the hook and plan see it: its parse tree and its text.
pub struct Statement<'a> {
    pub node: *mut pg_sys::Node,
    pub text: &'a str,
}

/// Statements the analysis has something to say about (checked by tag,
/// before anything else, on every utility statement).
pub fn is_candidate(node: *mut pg_sys::Node) -> bool {
    if node.is_null() {
        return false;
    }
    use pg_sys::NodeTag::*;
    matches!(
        unsafe { (*node).type_ },
        T_AlterTableStmt
            | T_IndexStmt
            | T_DropStmt
            | T_ReindexStmt
            | T_VacuumStmt
            | T_ClusterStmt
            | T_RenameStmt
    )
}

/// The steps of one statement (empty: nothing to say — not DDL on a table,
/// or a relation that does not exist, which PostgreSQL will report itself).
pub fn analyse(stmt: &Statement) -> Vec<Step> {
    use pg_sys::NodeTag::*;
    let node = stmt.node;
    if node.is_null() {
        return Vec::new();
    }
    match unsafe { (*node).type_ } {
        T_AlterTableStmt => alter::analyse(node as *mut pg_sys::AlterTableStmt),
        T_IndexStmt => statements::index(node as *mut pg_sys::IndexStmt, stmt.text),
        T_DropStmt => statements::drop(node as *mut pg_sys::DropStmt),
        T_ReindexStmt => statements::reindex(node as *mut pg_sys::ReindexStmt),
        T_VacuumStmt => statements::vacuum(node as *mut pg_sys::VacuumStmt),
        T_ClusterStmt => statements::cluster(node as *mut pg_sys::ClusterStmt),
        T_RenameStmt => statements::rename(node as *mut pg_sys::RenameStmt),
        T_SelectStmt => calls::analyse(node as *mut pg_sys::SelectStmt),
        _ => Vec::new(),
    }
}

/// A relation named in a statement, resolved as PostgreSQL will resolve it
/// (the session's search_path), without locking it; None if it does not exist.
pub(crate) fn resolve(rv: *mut pg_sys::RangeVar) -> Option<pg_sys::Oid> {
    if rv.is_null() {
        return None;
    }
    let oid = unsafe {
        pg_sys::RangeVarGetRelidExtended(
            rv,
            pg_sys::NoLock as _,
            pg_sys::RVROption::RVR_MISSING_OK,
            None,
            std::ptr::null_mut(),
        )
    };
    (oid != pg_sys::InvalidOid).then_some(oid)
}

/// A relation's name as SQL, qualified and quoted (`regclass` output is
/// unqualified on the search_path; zdm calls in hints must not depend on it).
pub fn relation_sql(relid: pg_sys::Oid) -> String {
    // From the syscache: this runs before every DDL statement (no SPI).
    unsafe {
        let name = pg_sys::get_rel_name(relid);
        let schema = pg_sys::get_namespace_name(pg_sys::get_rel_namespace(relid));
        if name.is_null() || schema.is_null() {
            return u32::from(relid).to_string();
        }
        format!("{}.{}", spi::ident(&cstr(schema)), spi::ident(&cstr(name)))
    }
}

/// The current user has the privileges of the relation's owner (what
/// PostgreSQL checks before it locks anything for the statements analysed
/// here). From the relcache: no SPI before every DDL statement.
pub fn owned(relid: pg_sys::Oid) -> bool {
    unsafe {
        let rel = pg_sys::RelationIdGetRelation(relid);
        if rel.is_null() {
            return false;
        }
        let owner = (*(*rel).rd_rel).relowner;
        pg_sys::RelationClose(rel);
        pg_sys::has_privs_of_role(pg_sys::GetUserId(), owner)
    }
}

/// `s` as an SQL string literal.
pub(crate) fn lit(s: &str) -> String {
    spi::literal(s)
}

/// The C string of a parse-tree String node's value.
pub(crate) fn str_val(node: *mut pg_sys::Node) -> String {
    unsafe {
        if node.is_null() || (*node).type_ != pg_sys::NodeTag::T_String {
            return String::new();
        }
        let s = (*(node as *mut pg_sys::String)).sval;
        if s.is_null() {
            String::new()
        } else {
            std::ffi::CStr::from_ptr(s).to_string_lossy().into_owned()
        }
    }
}

pub(crate) fn cstr(p: *const std::ffi::c_char) -> String {
    if p.is_null() {
        String::new()
    } else {
        unsafe { std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned() }
    }
}

/// The elements of a parse-tree List.
pub(crate) fn list<T>(l: *mut pg_sys::List) -> Vec<*mut T> {
    if l.is_null() {
        return Vec::new();
    }
    unsafe {
        (0..(*l).length as usize)
            .map(|i| (*(*l).elements.add(i)).ptr_value as *mut T)
            .collect()
    }
}

/// Whether a list of DefElem options holds `name` (true unless `name = false`).
pub(crate) fn has_option(options: *mut pg_sys::List, name: &str) -> bool {
    list::<pg_sys::DefElem>(options)
        .into_iter()
        .any(|d| unsafe {
            cstr((*d).defname) == name && ((*d).arg.is_null() || pg_sys::defGetBoolean(d))
        })
}

/// Whether PostgreSQL would change `column` of `relid` to the type written
/// `type_text` (no USING) without rewriting the table — alter's rule, for
/// zdm's own calls. None: it cannot tell (no such column or type).
pub fn plain_type_change_rewrites(relid: pg_sys::Oid, column: &str, type_text: &str) -> Option<bool> {
    let text = std::ffi::CString::new(type_text).ok()?;
    let tn = crate::subxact::attempt(|| unsafe { crate::compat::type_name(&text) }).ok()?;
    alter::type_change_rewrites(relid, column, tn, std::ptr::null_mut())
}
