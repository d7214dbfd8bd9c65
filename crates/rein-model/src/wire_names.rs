//! Tool names as providers accept them.
//!
//! rein's tool names may contain dots (`fs.read`, `orders.lookup`), but the OpenAI and Anthropic
//! APIs accept only `[A-Za-z0-9_-]{1,64}`. [`WireNames`] maps each name to a safe, unique wire
//! name for one request and maps the model's answer back.

use std::collections::HashMap;

/// A two-way map between rein's tool names and the names sent to a provider.
#[derive(Debug, Clone, Default)]
pub struct WireNames {
    to_wire: HashMap<String, String>,
    from_wire: HashMap<String, String>,
}

impl WireNames {
    /// Builds the map for a set of tool names.
    pub fn new<'a>(names: impl IntoIterator<Item = &'a str>) -> WireNames {
        let mut map = WireNames::default();
        for name in names {
            let base = sanitize(name);
            let mut wire = base.clone();
            let mut n = 2;
            while map.from_wire.contains_key(&wire) {
                let suffix = format!("_{n}");
                wire = format!("{}{suffix}", &base[..base.len().min(64 - suffix.len())]);
                n += 1;
            }
            map.to_wire.insert(name.to_owned(), wire.clone());
            map.from_wire.insert(wire, name.to_owned());
        }
        map
    }

    /// The wire name for a tool (names not in the map, such as a tool the model invented earlier,
    /// are sanitised the same way).
    pub fn to_wire(&self, name: &str) -> String {
        self.to_wire
            .get(name)
            .cloned()
            .unwrap_or_else(|| sanitize(name))
    }

    /// rein's name for a wire name; an unknown wire name is returned as is, so that the engine
    /// can reject it as an unknown tool.
    pub fn from_wire(&self, wire: &str) -> String {
        self.from_wire
            .get(wire)
            .cloned()
            .unwrap_or_else(|| wire.to_owned())
    }
}

fn sanitize(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    if out.is_empty() {
        out.push('_');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_collisions_get_suffixes() {
        let names = WireNames::new(["fs.read", "fs_read", "orders.lookup", "é"]);
        assert_eq!(names.to_wire("fs.read"), "fs_read");
        assert_eq!(names.to_wire("fs_read"), "fs_read_2");
        assert_eq!(names.to_wire("é"), "_");
        for n in ["fs.read", "fs_read", "orders.lookup", "é"] {
            assert_eq!(names.from_wire(&names.to_wire(n)), n);
        }
        assert_eq!(names.from_wire("made_up"), "made_up");
        let long = "x".repeat(80);
        let names = WireNames::new([long.as_str(), &format!("{long}y")]);
        assert!(names.to_wire(&format!("{long}y")).len() <= 64);
    }
}
