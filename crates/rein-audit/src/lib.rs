//! rein's audit trail: evidence an auditor can check without trusting rein or its database.
//!
//! Every decision, approval, model call, tool outcome, run start and end, and key change becomes
//! a canonical JSON record in an append-only log. The log is an RFC 6962 Merkle tree over SHA-256;
//! rein signs checkpoints (tree size, root, time, key id, and the hash of the previous checkpoint)
//! with Ed25519. [`verify`] recomputes everything from the files and reports the first record or
//! checkpoint that fails; [`prove`] and [`verify_proof`] give and check inclusion proofs offline.

mod cursors;
mod keys;
mod lines;
mod log;
pub mod merkle;
mod verify;

pub use cursors::AllCursors;
pub use keys::{format_public, key_id, parse_public};
pub use log::{AuditLog, AuditOptions, AuditPaths, Checkpoint, Data, Entry, Record, rotate_key};
pub use verify::{
    InclusionProof, RecordHead, VerifyReport, each_record_head, prove, read_held_checkpoints,
    read_records, records_where, verify, verify_against, verify_bytes, verify_proof,
};

/// What can go wrong with the audit log.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The signing key or a public key is unusable.
    #[error("audit key: {0}")]
    Key(String),
    /// A record could not be encoded.
    #[error("audit record: {0}")]
    Format(String),
    /// Verification failed: the first record or checkpoint that does not hold.
    #[error("{0}")]
    Verify(String),
}
