//! Running user-visible work on another role's behalf, the way PostgreSQL
//! runs VACUUM, CLUSTER and REFRESH MATERIALIZED VIEW.
//!
//! * The migration's owner is the owner of its table at expand time (the
//!   role VACUUM would switch to), stored by name in `zdm.migrations`. It is
//!   resolved to an OID when work starts and checked again before each batch,
//!   so a dropped or renamed role fails the job instead of running as whoever
//!   holds that OID or name now. A superuser restarting a tenant's job never
//!   changes whom the work runs as.
//! * `as_owner` switches to that role with `SECURITY_RESTRICTED_OPERATION`
//!   (no SET ROLE, no temp objects, no cursors WITH HOLD) inside a new GUC
//!   nest level, pins `search_path = pg_catalog, pg_temp` and
//!   `row_security = off` (RLS that would hide rows becomes an error, never
//!   a silent skip), and rolls every setting back afterwards — including a
//!   `set_config(..., false)` made by a user's trigger, CHECK or index
//!   expression. On error, the (sub)transaction abort restores both the user
//!   id and the settings.
//! * Controlling a migration needs membership in the owning role, checked
//!   before any lock is taken (`require_member`).

use crate::errors::{raise, raise_with_detail, Code};
use crate::spi;
use pgrx::prelude::*;

/// Settings every piece of zdm-run SQL sees: nothing a caller, a database
/// default (`ALTER DATABASE … SET search_path`) or a user's code set.
const PINNED_SEARCH_PATH: &std::ffi::CStr = c"pg_catalog, pg_temp";

pub(crate) fn set_guc(name: &std::ffi::CStr, value: &std::ffi::CStr, action: pg_sys::GucAction::Type) {
    set_guc_as(pg_sys::GucContext::PGC_USERSET, name, value, action)
}

/// `set_guc` in `context`: `PGC_SUSET` for a superuser's setting that zdm
/// sets for its own work only (`deadlock_timeout`), whoever the caller is.
pub(crate) fn set_guc_as(context: pg_sys::GucContext::Type, name: &std::ffi::CStr, value: &std::ffi::CStr, action: pg_sys::GucAction::Type) {
    unsafe {
        pg_sys::set_config_option(
            name.as_ptr(),
            value.as_ptr(),
            context,
            pg_sys::GucSource::PGC_S_SESSION,
            action,
            true,
            0,
            false,
        );
    }
}

/// A GUC nest level: settings made inside are rolled back when it ends
/// (`AtEOXact_GUC(false, …)`, as VACUUM does), whatever set them.
pub fn with_guc_nest_level<R>(pin: &[(&std::ffi::CStr, &std::ffi::CStr)], f: impl FnOnce() -> R) -> R {
    with_guc_nest_level_as(pg_sys::GucContext::PGC_USERSET, pin, f)
}

/// `with_guc_nest_level`, the settings made in `context` (`set_guc_as`).
pub fn with_guc_nest_level_as<R>(context: pg_sys::GucContext::Type, pin: &[(&std::ffi::CStr, &std::ffi::CStr)], f: impl FnOnce() -> R) -> R {
    let level = unsafe { pg_sys::NewGUCNestLevel() };
    for (name, value) in pin {
        set_guc_as(context, name, value, pg_sys::GucAction::GUC_ACTION_SAVE);
    }
    let r = f();
    unsafe { pg_sys::AtEOXact_GUC(false, level) };
    r
}

/// Run `f` with zdm's pinned search_path (rolled back afterwards), and
/// standard-conforming strings: a backslash in zdm's SQL, or in user text
/// zdm recorded, means what it meant when it was checked.
pub fn pinned_search_path<R>(f: impl FnOnce() -> R) -> R {
    with_guc_nest_level(&[(c"search_path", PINNED_SEARCH_PATH), (c"standard_conforming_strings", c"on")], f)
}

/// Settings an expression is deparsed under, when it is recorded and when a
/// trigger checks that it still deparses the same: how a constant prints
/// depends on them, and a writer's session may differ from the caller's.
const DEPARSE_SETTINGS: [(&std::ffi::CStr, &std::ffi::CStr); 7] = [
    (c"search_path", PINNED_SEARCH_PATH),
    (c"standard_conforming_strings", c"on"),
    (c"DateStyle", c"ISO, YMD"),
    (c"IntervalStyle", c"postgres"),
    (c"TimeZone", c"UTC"),
    (c"extra_float_digits", c"1"),
    (c"bytea_output", c"hex"),
];

/// Run `f` (a deparse) under `DEPARSE_SETTINGS`.
pub fn deparse_pinned<R>(f: impl FnOnce() -> R) -> R {
    with_guc_nest_level(&DEPARSE_SETTINGS, f)
}

/// Who runs now: the user id and security context, to go back to after a
/// switch. The one place zdm changes the current user.
pub struct Identity {
    user: pg_sys::Oid,
    context: i32,
}

impl Identity {
    pub fn current() -> Identity {
        let mut id = Identity { user: pg_sys::InvalidOid, context: 0 };
        unsafe { pg_sys::GetUserIdAndSecContext(&mut id.user, &mut id.context) };
        id
    }

    /// Act as `role` (`restricted`: with SECURITY_RESTRICTED_OPERATION too).
    /// Returns who ran before, for `restore`.
    pub fn switch_to(role: pg_sys::Oid, restricted: bool) -> Identity {
        let was = Identity::current();
        let mut context = was.context | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32;
        if restricted {
            context |= pg_sys::SECURITY_RESTRICTED_OPERATION as i32;
        }
        unsafe { pg_sys::SetUserIdAndSecContext(role, context) };
        was
    }

    pub fn restore(&self) {
        unsafe { pg_sys::SetUserIdAndSecContext(self.user, self.context) };
    }
}

/// Run `f` as `role`, security-restricted, with pinned settings that are
/// rolled back afterwards. All user-visible work goes through here.
pub fn as_owner<R>(role: pg_sys::Oid, f: impl FnOnce() -> R) -> R {
    with_guc_nest_level(&[(c"search_path", PINNED_SEARCH_PATH), (c"row_security", c"off")], || {
        let was = Identity::switch_to(role, true);
        let r = crate::errors::keep_user_sqlstate(f);
        was.restore();
        r
    })
}

/// Run `f` as `role` (not security-restricted): zdm's own catalog access as
/// the extension owner, which `catalog::as_catalog_owner` wraps in the pinned
/// search_path. An error aborts the (sub)transaction, which restores the user.
pub fn as_role<R>(role: pg_sys::Oid, f: impl FnOnce() -> R) -> R {
    let was = Identity::switch_to(role, false);
    let r = f();
    was.restore();
    r
}

/// Set a setting for the rest of the session (a worker's: `toplevel`).
pub fn set_session_guc(name: &std::ffi::CStr, value: &str) {
    let value = std::ffi::CString::new(value).unwrap_or_default();
    set_guc(name, &value, pg_sys::GucAction::GUC_ACTION_SET);
}

/// For a background process's whole session: zdm's own SQL never resolves
/// names through a search_path that a database owner (`ALTER DATABASE …
/// SET`) or anybody else chose.
pub fn pin_session_search_path() {
    unsafe {
        pg_sys::SetConfigOption(
            c"search_path".as_ptr(),
            PINNED_SEARCH_PATH.as_ptr(),
            pg_sys::GucContext::PGC_SUSET,
            pg_sys::GucSource::PGC_S_OVERRIDE,
        );
        pg_sys::SetConfigOption(
            c"standard_conforming_strings".as_ptr(),
            c"on".as_ptr(),
            pg_sys::GucContext::PGC_SUSET,
            pg_sys::GucSource::PGC_S_OVERRIDE,
        );
    }
}

/// The OID of role `name`, or a clear 42704 saying the migration cannot run.
pub fn resolve_owner(name: &str, migration: i64) -> pg_sys::Oid {
    match spi::one::<pg_sys::Oid>("SELECT oid FROM pg_catalog.pg_roles WHERE rolname = $1", &[name.into()]) {
        Some(oid) => oid,
        None => raise(
            Code::ERRCODE_UNDEFINED_OBJECT,
            format!("role {} that owns zdm migration {migration} no longer exists", spi::ident(name)),
            format!("Work on a migration runs as its owner. Recreate the role, or call zdm.abort({migration})."),
        ),
    }
}

/// Before each batch: the OID resolved at start still names the owner.
pub fn check_owner_unchanged(oid: pg_sys::Oid, name: &str, migration: i64) {
    let now = spi::one::<String>("SELECT rolname::text FROM pg_catalog.pg_roles WHERE oid = $1", &[oid.into()]);
    if now.as_deref() != Some(name) {
        raise(
            Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!(
                "role {} that owns zdm migration {migration} was {} while its job ran",
                spi::ident(name),
                if now.is_some() { "renamed" } else { "dropped" }
            ),
            format!("Work on a migration runs as its owner. Restore the role, then call zdm.start_backfill({migration}), or zdm.abort({migration})."),
        );
    }
}

/// The caller must be a member of the migration's owning role (superusers
/// are members of every role). Checked before any lock is taken.
pub fn require_member(owner_name: &str, migration: i64, action: &str) {
    let member = spi::one::<bool>(
        "SELECT pg_catalog.pg_has_role(r.oid, 'MEMBER') FROM pg_catalog.pg_roles r WHERE r.rolname = $1",
        &[owner_name.into()],
    );
    match member {
        Some(true) => {}
        Some(false) => raise_with_detail(
            Code::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("permission denied to {action} zdm migration {migration}"),
            format!("The migration is owned by role {}.", spi::ident(owner_name)),
            "Run this as the migration's owner (the table owner) or a member of that role.",
        ),
        None => {
            if !unsafe { pg_sys::superuser() } {
                raise(
                    Code::ERRCODE_INSUFFICIENT_PRIVILEGE,
                    format!("permission denied to {action} zdm migration {migration}: its owner role {} no longer exists", spi::ident(owner_name)),
                    "Only a superuser can abort a migration whose owner is gone.",
                );
            }
        }
    }
}
