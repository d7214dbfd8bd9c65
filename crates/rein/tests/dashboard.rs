//! The dashboard in a real browser: Debian's Chromium driven by Playwright (`playwright-core`
//! from npm) against `rein serve` on loopback, through sign-in, a run that asks for approval,
//! the inbox, the decision, the run completing live, its cost, and a second tenant who sees none
//! of it. Screenshots of every page go to `REIN_SCREENSHOTS` (docs/screenshots keeps them).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::REIN;
use rein_testkit::serve::{Served, client, token};
use rein_testkit::{AgentFolder, copy_dir};

/// Where `.ci/run` installs playwright-core.
fn playwright() -> PathBuf {
    let dir = std::env::var_os("REIN_BROWSER_MODULES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(&std::env::var("HOME").unwrap_or_default())
                .join(".cache/rein/browser/node_modules")
        });
    assert!(
        dir.join("playwright-core").is_dir() && Path::new("/usr/bin/chromium").is_file(),
        "playwright-core (in {}) and Debian's chromium are needed; .ci/run installs them",
        dir.display()
    );
    dir
}

#[tokio::test(flavor = "multi_thread")]
async fn a_person_approves_a_run_in_the_dashboard_and_another_tenant_sees_none_of_it() {
    let modules = playwright();
    let root = tempfile::tempdir().unwrap();
    let pay = AgentFolder::new(&format!(
        "name = \"pay\"\ninstructions = \"Pay.\"\ndefault_task = \"pay the bill\"\n{}\n[[budgets]]\nscope = \"tenant\"\nperiod = \"day\"\ncost_usd = 1.0\n[prices.s]\ninput = 100.0\noutput = 400.0\n[[tools]]\nname = \"pay\"\ndescription = \"Pay\"\ncommand = [\"sh\", \"-c\", \"cat > /dev/null; echo '{{\\\"paid\\\": true}}'\"]\nargs_schema = {{ type = \"object\", properties = {{ amount = {{ type = \"number\" }} }} }}\n",
        rein_testkit::SCRIPTED_MODEL
    ))
    .file(
        "script.toml",
        "[[turns]]\ncalls = [{ tool = \"pay\", args = { amount = 5 } }]\n[[turns]]\ntext = \"paid\"\n",
    )
    .policy("@id(\"a-person-pays\")\n@ask(\"a person pays\")\npermit(principal, action == Action::\"pay\", resource);\npermit(principal, action == Action::\"use_model\", resource);\n");
    copy_dir(pay.path(), &root.path().join("pay"));
    let state = tempfile::tempdir().unwrap();
    let a = token(
        REIN,
        state.path(),
        "acme",
        "ann",
        "runs:write,approvals:decide,admin",
    );
    let b = token(
        REIN,
        state.path(),
        "globex",
        "gil",
        "runs:write,approvals:decide",
    );
    let s = Served::start(REIN, state.path(), root.path(), &[]);
    // The page and its files come with a policy that allows no inline script.
    let r = client().get(s.url("/")).send().await.unwrap();
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    let shots = std::env::var_os("REIN_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| state.path().join("screenshots"));
    std::fs::create_dir_all(&shots).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/dashboard.cjs");
    let out = Command::new("node")
        .arg(&script)
        .args([&s.base, &a, &b])
        .arg(&shots)
        .env("NODE_PATH", &modules)
        .output()
        .expect("node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.trim_end().ends_with("ok"),
        "the browser test failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for page in [
        "sign-in",
        "runs",
        "run",
        "approvals",
        "costs",
        "audit",
        "agents",
    ] {
        for size in ["wide", "phone"] {
            assert!(shots.join(format!("{page}-{size}.png")).is_file());
        }
    }
}
