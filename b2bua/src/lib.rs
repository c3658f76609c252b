//! sans-IO privacy B2BUA core (issue 5).
pub mod dialog;
pub mod ids;
pub mod leak;
pub mod leg;
pub mod media;
pub mod policy;

pub use dialog::{Action, CallSetup, DialogMap, LegRef, MapStats, Outcome};
pub use ids::{IdSource, SeededIds};
pub use leak::{
    Finding, FindingKind, Identifier, audit, foreign_private_addresses, is_non_public, leak_scan,
    private_addresses,
};
pub use leg::{
    ANONYMOUS_FROM, CallerIdentity, EdgeAddress, EdgeTransport, FarInvite, FarTarget,
    build_far_invite, check_invite,
};
pub use media::{
    CallRef, CountingAnchor, MediaAnchor, MediaContext, MediaError, MediaRequest, SdpOrigin, Side,
    rewrite_sdp,
};
pub use policy::{PrivacyPolicy, PrivacyRequest, Refusal, RefusalCause, SdpPolicy};
