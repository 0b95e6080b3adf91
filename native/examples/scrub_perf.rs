//! Quick timing of the scrubber's search on plain prose: `cargo run --release --example scrub_perf`.
use std::time::Instant;

fn main() {
    let s = _native::scrub::Scrubber::new(&["hunter2hunter2"]).expect("build");
    let text: String = "Hello, can you help me debug this? ".repeat(30)[..1024].to_string();
    let mut scratch = s.scratch();
    let mut counts = vec![0u64; s.rule_names().len()];
    for _ in 0..1000 {
        s.scrub(&mut scratch, &text, &mut counts);
    }
    let n = 20000;
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(s.scrub(&mut scratch, &text, &mut counts));
    }
    println!(
        "scrub 1KB: {:.2} us",
        t.elapsed().as_secs_f64() / n as f64 * 1e6
    );
    let ac = aho_corasick::AhoCorasick::builder()
        .ascii_case_insensitive(true)
        .match_kind(aho_corasick::MatchKind::LeftmostFirst)
        .build(_native::rules::TRIGGERS)
        .expect("ac");
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(ac.find(&text));
    }
    println!(
        "ac 1KB: {:.2} us",
        t.elapsed().as_secs_f64() / n as f64 * 1e6
    );
    let ac2 = aho_corasick::AhoCorasick::builder()
        .ascii_case_insensitive(true)
        .kind(Some(aho_corasick::AhoCorasickKind::DFA))
        .prefilter(false)
        .match_kind(aho_corasick::MatchKind::LeftmostFirst)
        .build(_native::rules::TRIGGERS)
        .expect("ac");
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(ac2.find(&text));
    }
    println!(
        "ac dfa 1KB: {:.2} us",
        t.elapsed().as_secs_f64() / n as f64 * 1e6
    );
    for (i, r) in _native::rules::builtin().iter().enumerate() {
        let re = regex_automata::meta::Regex::new(&r.pattern).expect("pattern");
        let t = Instant::now();
        for _ in 0..2000 {
            std::hint::black_box(re.is_match(&text));
        }
        println!(
            "{i:2} {:20} {:.2} us",
            r.name,
            t.elapsed().as_secs_f64() / 2000.0 * 1e6
        );
    }
}
