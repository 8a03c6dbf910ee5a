//! The one role table: which role may do and see what. The HTTP edge, the domain's ownership
//! rule and the audit all ask [`Role::allows`]; `docs/roles.md` is tested against [`table`].
//! Must not: be restated anywhere else (a second `match` on roles is a second table).

use crate::actor::Role;
use crate::command::ActionKind;

/// Something an actor may do or see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    DeclarePool,
    AdjustCapacity,
    ClosePool,
    Reserve,
    /// Confirm a reservation the actor made itself.
    ConfirmOwn,
    /// Cancel a reservation the actor made itself.
    CancelOwn,
    /// Confirm or cancel a reservation another actor made (a back office acting for a customer);
    /// the event records both the actor and the owner.
    ActForOthers,
    /// Expire a lapsed hold, whoever made it.
    Expire,
    /// Register and revoke actors.
    ManageActors,
    /// Read a pool's counts.
    ReadPool,
    /// Read a reservation the actor made, with its requester.
    ReadOwnReservation,
    /// Read any reservation, with its requester.
    ReadAnyReservation,
    /// Read the signed head of the log (`GET /v1/head`).
    ReadHead,
    /// Sign the seals of the log's batches (receipts and the head): a server instance's key.
    SignSeals,
}

impl Permission {
    pub const ALL: [Permission; 14] = [
        Permission::DeclarePool,
        Permission::AdjustCapacity,
        Permission::ClosePool,
        Permission::Reserve,
        Permission::ConfirmOwn,
        Permission::CancelOwn,
        Permission::ActForOthers,
        Permission::Expire,
        Permission::ManageActors,
        Permission::ReadPool,
        Permission::ReadOwnReservation,
        Permission::ReadAnyReservation,
        Permission::ReadHead,
        Permission::SignSeals,
    ];

    /// The permission's name in the docs' table.
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::DeclarePool => "declare_pool",
            Permission::AdjustCapacity => "adjust_capacity",
            Permission::ClosePool => "close_pool",
            Permission::Reserve => "reserve",
            Permission::ConfirmOwn => "confirm own reservation",
            Permission::CancelOwn => "cancel own reservation",
            Permission::ActForOthers => "confirm or cancel another actor's reservation",
            Permission::Expire => "expire_reservation",
            Permission::ManageActors => "register_actor, revoke_actor",
            Permission::ReadPool => "read a pool",
            Permission::ReadOwnReservation => "read own reservation (with requester)",
            Permission::ReadAnyReservation => "read any reservation (with requester)",
            Permission::ReadHead => "read the signed head",
            Permission::SignSeals => "sign seals (receipts, the head)",
        }
    }

    /// What a command of `kind` needs, on the actor's own reservation (acting on another
    /// actor's needs [`Permission::ActForOthers`] too).
    pub fn for_action(kind: ActionKind) -> Permission {
        match kind {
            ActionKind::DeclarePool => Permission::DeclarePool,
            ActionKind::AdjustCapacity => Permission::AdjustCapacity,
            ActionKind::ClosePool => Permission::ClosePool,
            ActionKind::Reserve => Permission::Reserve,
            ActionKind::ConfirmReservation => Permission::ConfirmOwn,
            ActionKind::CancelReservation => Permission::CancelOwn,
            ActionKind::ExpireReservation => Permission::Expire,
        }
    }
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Admin,
        Role::Client,
        Role::Sweeper,
        Role::Auditor,
        Role::Server,
    ];

    /// The role table.
    pub fn allows(self, permission: Permission) -> bool {
        use Role::{Admin, Auditor, Client, Server, Sweeper};
        let roles: &[Role] = match permission {
            Permission::DeclarePool
            | Permission::AdjustCapacity
            | Permission::ClosePool
            | Permission::ManageActors
            | Permission::ActForOthers => &[Admin],
            Permission::Reserve | Permission::ConfirmOwn | Permission::CancelOwn => {
                &[Admin, Client]
            }
            Permission::Expire => &[Admin, Sweeper],
            Permission::ReadPool => &[Admin, Client, Auditor],
            Permission::ReadOwnReservation => &[Admin, Client],
            Permission::ReadAnyReservation => &[Admin, Auditor],
            Permission::ReadHead => &[Admin, Client, Auditor],
            Permission::SignSeals => &[Server],
        };
        roles.contains(&self)
    }

    /// Whether this role may perform an action of `kind` (on its own reservation).
    pub fn may(self, kind: ActionKind) -> bool {
        self.allows(Permission::for_action(kind))
    }
}

/// The table as Markdown, permissions down and roles across (`docs/roles.md` holds it).
pub fn table() -> String {
    let mut out = String::from("| permission |");
    for role in Role::ALL {
        out.push_str(&format!(" {} |", role.as_str()));
    }
    out.push_str("\n|---|");
    for _ in Role::ALL {
        out.push_str("---|");
    }
    out.push('\n');
    for permission in Permission::ALL {
        out.push_str(&format!("| {} |", permission.as_str()));
        for role in Role::ALL {
            out.push_str(if role.allows(permission) {
                " yes |"
            } else {
                " — |"
            });
        }
        out.push('\n');
    }
    out
}
