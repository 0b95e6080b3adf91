//! Quick timing of token counting: `cargo run --release --example token_perf`.
use std::time::Instant;

fn main() {
    let text =
        "Sure! Here's how you can fix the error you're seeing. The traceback shows that the \
                request handler raised a KeyError because the 'user_id' field is missing. "
            .repeat(8);
    let enc = _native::tokens::tokenizer("o200k_base").expect("tokenizer");
    let tok = enc.tokenizer;
    for _ in 0..200 {
        std::hint::black_box(tok.count(text.as_str()));
    }
    let n = 2000;
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(enc.count(text.as_str()));
    }
    println!(
        "fast count: {:.2} us",
        t.elapsed().as_secs_f64() / n as f64 * 1e6
    );
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(tok.count(text.as_str()));
    }
    println!(
        "count {} bytes: {:.2} us",
        text.len(),
        t.elapsed().as_secs_f64() / n as f64 * 1e6
    );
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(tok.split(text.as_str()).count());
    }
    println!(
        "split only: {:.2} us",
        t.elapsed().as_secs_f64() / n as f64 * 1e6
    );
    let pieces: Vec<&str> = tok.split(text.as_str()).collect();
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(
            pieces
                .iter()
                .map(|p| tok.bpe.count(p.as_bytes()))
                .sum::<usize>(),
        );
    }
    println!(
        "bpe only: {:.2} us ({} pieces)",
        t.elapsed().as_secs_f64() / n as f64 * 1e6,
        pieces.len()
    );
}
