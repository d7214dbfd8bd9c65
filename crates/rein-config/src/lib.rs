//! agent.toml for rein: strict parsing with file/line/field errors, resolution into a typed spec, and its JSON Schema.
