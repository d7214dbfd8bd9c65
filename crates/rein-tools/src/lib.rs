//! Tools for rein behind one Tool trait: manifests, argument validation, built-ins (fs, http) and command tools.
