//! Quick timing of the scrubber on clean prose and on hostile input, per byte:
//! `cargo run --release --example scrub_perf`.
use std::time::Instant;

use _native::scrub::Scrubber;

fn time(s: &Scrubber, text: &str) -> (f64, f64) {
    let mut scratch = s.scratch();
    let mut counts = vec![0u64; s.rule_names().len()];
    let mut best = f64::MAX;
    for _ in 0..25 {
        scratch.steps = 0;
        let t = Instant::now();
        std::hint::black_box(s.scrub(&mut scratch, text, &mut counts));
        best = best.min(t.elapsed().as_secs_f64());
    }
    (
        best / text.len() as f64 * 1e9,
        scratch.steps as f64 / text.len() as f64,
    )
}

fn main() {
    let table = include_str!("../../iir/policy/scrub_rules.toml");
    let rules = match _native::rules::parse_table(table) {
        Ok(r) => r,
        Err(e) => return eprintln!("{e}"),
    };
    let s = match Scrubber::with_rules(&["hunter2hunter2"], rules) {
        Ok(s) => s,
        Err(e) => return eprintln!("{e}"),
    };
    let size = 1 << 20;
    let families = [
        (
            "clean prose",
            "Hello, can you help me debug this? It fails on line 3. ",
        ),
        ("token=...", "token=..."),
        (
            "PEM header, no end",
            "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0B\n",
        ),
        ("unclosed quote", "password=\""),
        ("trigger, no value", "token "),
        ("glued triggers", "token"),
        ("nested quotes", "password=\"'"),
        ("one character", "a"),
        ("sk-xxxxx", "sk-xxxxx"),
        ("env prefix", "hunter2hunter "),
        ("basic", "basic "),
        ("bearer", "Authorization: Bearer "),
        ("accepted", "password=Zq9xWv8u "),
    ];
    let only = std::env::args().nth(1);
    if let Some(path) = only.as_deref().and_then(|o| o.strip_prefix("file:")) {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let (ns, steps) = time(&s, &text);
        return println!("{path}: {ns:7.2} ns/byte {steps:6.2} steps/byte");
    }
    for (name, unit) in families {
        if only.as_deref().is_some_and(|o| o != name) {
            continue;
        }
        let text = unit.repeat(size / unit.len());
        let (ns, steps) = time(&s, &text);
        println!("{name:20} {ns:7.2} ns/byte {steps:6.2} steps/byte");
    }
}
