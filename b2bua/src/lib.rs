//! sans-IO privacy B2BUA core (issue 5).
pub mod ids;
pub mod media;
pub mod policy;

pub use ids::{IdSource, SeededIds};
pub use media::{CallRef, MediaAnchor, MediaError, MediaRequest, Side};
pub use policy::{PrivacyPolicy, PrivacyRequest, Refusal, RefusalCause, SdpPolicy};
