//! rein's wire types, by version. A face (the CLI's JSON output, the HTTP API) speaks one
//! version; a new version is added beside the old rather than changing it.

pub mod v1;
