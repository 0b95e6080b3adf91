//! The forms a character takes in the wrappers text comes in: as is, inside a JSON string
//! (`\"`, `\/`, `\n`), URL-encoded (`%2F`, `%3d`) and form-encoded (`+` for a space).
//!
//! A rule is written for plain text; [`wrap_forms`] rewrites its pattern so that each character
//! that a wrapper changes also matches its changed forms, and [`trigger_forms`] gives the start
//! literals those forms begin with. A secret is then found, and redacted whole, in a JSON
//! document pasted into a prompt or in a URL-encoded query as well as in plain text.
//!
//! Classes that take almost anything (an assignment's value, `[^\s"']`) already take `%` and the
//! hex digits after it: a `%XX` inside them stays part of the value (in plain text it is part of
//! it: an encoded password in a URL), except the encoding of a space, a line break, a quote or a
//! bracket the class refuses, which ends the value as the character itself would. So in
//! URL-encoded text such a value may run on past an encoded `&` or `;`: the redaction then takes
//! more than the secret, never less. A backslash in them is taken only before a character the
//! class takes, or a JSON escape of one (so that a JSON string's `\"` and `\n` end the value).

use regex_syntax::hir::{
    Capture, Class, ClassBytes, ClassUnicode, ClassUnicodeRange, Hir, HirKind, Repetition,
};

/// Whether URL encoding (`quote(s, safe="")`) or JSON escaping changes `c`.
pub fn is_special(c: char) -> bool {
    !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '~')) && c.is_ascii()
}

/// The spellings of `c` in the wrappers, besides `c` itself, as literal strings; hex digits in
/// lowercase (start literals are matched ASCII case-insensitively; patterns take both cases).
fn spellings(c: char) -> Vec<String> {
    let mut out = Vec::new();
    if !is_special(c) {
        return out;
    }
    out.push(format!("%{:02x}", c as u32));
    if c == ' ' {
        out.push("+".into());
    }
    match c {
        '"' => out.push("\\\"".into()),
        '\\' => out.push("\\\\".into()),
        '/' => out.push("\\/".into()),
        '\n' => out.push("\\n".into()),
        '\r' => out.push("\\r".into()),
        '\t' => out.push("\\t".into()),
        '\u{8}' => out.push("\\b".into()),
        '\u{c}' => out.push("\\f".into()),
        c if (c as u32) < 0x20 || c == '\u{7f}' => out.push(format!("\\u{:04x}", c as u32)),
        _ => {}
    }
    out
}

/// A literal string as a pattern whose ASCII letters match either case (hex digits of `%XX`
/// and `\uXXXX` come in both).
fn either_case(s: &str) -> Hir {
    Hir::concat(
        s.chars()
            .map(|c| {
                if c.is_ascii_alphabetic() {
                    let (l, u) = (c.to_ascii_lowercase(), c.to_ascii_uppercase());
                    Hir::class(Class::Unicode(ClassUnicode::new([
                        ClassUnicodeRange::new(u, u),
                        ClassUnicodeRange::new(l, l),
                    ])))
                } else {
                    Hir::literal(c.to_string().into_bytes())
                }
            })
            .collect(),
    )
}

/// `c` in any of its forms.
fn char_forms(c: char) -> Hir {
    let plain = Hir::literal(c.to_string().into_bytes());
    let more = spellings(c);
    if more.is_empty() {
        return plain;
    }
    let mut alts = vec![plain];
    for s in more {
        // `\n`, `\t`: the letter after a backslash has one case.
        if s.starts_with('\\') && !s.starts_with("\\u") {
            alts.push(Hir::literal(s.into_bytes()));
        } else {
            alts.push(either_case(&s));
        }
    }
    Hir::alternation(alts)
}

/// Characters whose URL encoding ends a value of a class that refuses them: in URL-encoded text
/// they delimit (spaces, quotes, brackets), and plain-text values rarely hold them encoded.
const ENDS_A_VALUE: [char; 14] = [
    '\t', '\n', '\r', ' ', '"', '\'', '<', '>', '(', ')', '[', ']', '{', '}',
];

fn unicode_class(chars: impl IntoIterator<Item = char>) -> ClassUnicode {
    ClassUnicode::new(chars.into_iter().map(|c| ClassUnicodeRange::new(c, c)))
}

/// A class in its forms: its special members also in their spellings. A class that takes `%`
/// keeps it (see the module documentation); one that takes `\` takes it only before one of its
/// members, or before a JSON escape of one (so that `\"` and `\n` end a value that takes neither a
/// quote nor a line break).
fn class_forms(class: &ClassUnicode) -> Hir {
    let contains = |c: char| {
        class
            .ranges()
            .iter()
            .any(|r| r.start() <= c && c <= r.end())
    };
    let specials: Vec<char> = (0u8..128)
        .map(char::from)
        .filter(|&c| is_special(c) && contains(c))
        .collect();
    if specials.is_empty() {
        return Hir::class(Class::Unicode(class.clone()));
    }
    let broad = contains('%');
    let mut base = class.clone();
    base.difference(&unicode_class(['\\', '%']));
    let mut alts = vec![Hir::class(Class::Unicode(base.clone()))];
    if broad {
        // `%` and what follows it: not the encoding of a space, a line break, a quote or an
        // angle bracket the class refuses (those end a value in URL-encoded text).
        let hex = unicode_class("0123456789ABCDEFabcdef".chars());
        let mut not_hex = class.clone();
        not_hex.difference(&hex);
        let mut pairs = Vec::new();
        for hi in "0123456789ABCDEF".chars() {
            let lows: Vec<char> = "0123456789ABCDEF"
                .chars()
                .filter(|lo| {
                    let code = hi.to_digit(16).unwrap_or(0) * 16 + lo.to_digit(16).unwrap_or(0);
                    let c = char::from_u32(code).unwrap_or('\0');
                    !ENDS_A_VALUE.contains(&c) || contains(c)
                })
                .collect();
            if lows.is_empty() {
                continue;
            }
            let both = |cs: &[char]| {
                unicode_class(
                    cs.iter()
                        .flat_map(|c| [c.to_ascii_uppercase(), c.to_ascii_lowercase()]),
                )
            };
            pairs.push(Hir::concat(vec![
                Hir::class(Class::Unicode(both(&[hi]))),
                Hir::class(Class::Unicode(both(&lows))),
            ]));
        }
        pairs.push(Hir::class(Class::Unicode(not_hex.clone())));
        pairs.push(Hir::concat(vec![
            Hir::class(Class::Unicode(hex)),
            Hir::class(Class::Unicode(not_hex)),
        ]));
        alts.push(Hir::concat(vec![
            Hir::literal(b"%".to_vec()),
            Hir::alternation(pairs),
        ]));
    }
    if contains('\\') {
        // After a backslash: a JSON escape whose character the class takes, or any other
        // character it takes (a backslash in plain text).
        let escapes = [
            ('n', '\n'),
            ('r', '\r'),
            ('t', '\t'),
            ('b', '\u{8}'),
            ('f', '\u{c}'),
            ('"', '"'),
            ('/', '/'),
            ('\\', '\\'),
            ('u', '\u{80}'),
        ];
        let mut after = base.clone();
        after.difference(&unicode_class(escapes.iter().map(|e| e.0)));
        after.union(&unicode_class(
            escapes.iter().filter(|e| contains(e.1)).map(|e| e.0),
        ));
        alts.push(Hir::concat(vec![
            Hir::literal(b"\\".to_vec()),
            Hir::class(Class::Unicode(after)),
        ]));
    }
    if !broad {
        for c in specials {
            for s in spellings(c) {
                if s.starts_with('\\') && !s.starts_with("\\u") {
                    alts.push(Hir::literal(s.into_bytes()));
                } else {
                    alts.push(either_case(&s));
                }
            }
        }
    }
    Hir::alternation(alts)
}

fn bytes_to_unicode(class: &ClassBytes) -> Option<ClassUnicode> {
    class.ranges().iter().all(|r| r.end() < 128).then(|| {
        ClassUnicode::new(
            class
                .ranges()
                .iter()
                .map(|r| ClassUnicodeRange::new(char::from(r.start()), char::from(r.end()))),
        )
    })
}

fn transform(h: &Hir) -> Hir {
    match h.kind() {
        HirKind::Empty | HirKind::Look(_) => h.clone(),
        HirKind::Literal(lit) => match std::str::from_utf8(&lit.0) {
            Ok(s) if s.chars().any(is_special) => Hir::concat(s.chars().map(char_forms).collect()),
            _ => h.clone(),
        },
        HirKind::Class(Class::Unicode(c)) => class_forms(c),
        HirKind::Class(Class::Bytes(b)) => match bytes_to_unicode(b) {
            Some(u)
                if u.ranges()
                    .iter()
                    .any(|r| (r.start()..=r.end()).any(is_special)) =>
            {
                class_forms(&u)
            }
            _ => h.clone(),
        },
        HirKind::Repetition(r) => Hir::repetition(Repetition {
            min: r.min,
            max: r.max,
            greedy: r.greedy,
            sub: Box::new(transform(&r.sub)),
        }),
        HirKind::Capture(c) => Hir::capture(Capture {
            index: c.index,
            name: c.name.clone(),
            sub: Box::new(transform(&c.sub)),
        }),
        HirKind::Concat(items) => Hir::concat(items.iter().map(transform).collect()),
        HirKind::Alternation(items) => Hir::alternation(items.iter().map(transform).collect()),
    }
}

/// The pattern rewritten to match its text in every wrapper (see the module documentation).
pub fn wrap_forms(pattern: &str) -> Result<String, String> {
    let hir = regex_syntax::parse(pattern).map_err(|e| e.to_string())?;
    Ok(transform(&hir).to_string())
}

/// Most spellings of one start literal: past that, the literal is cut before its next special
/// character (a shorter literal is found as surely, only more often).
const MAX_SPELLINGS: usize = 16;

/// The start literals of a trigger in every wrapper: its characters in their forms, the whole
/// trigger unless its spellings would grow past [`MAX_SPELLINGS`] (then it is cut before that
/// special character, once every spelling has three bytes).
pub fn trigger_forms(trigger: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    for c in trigger.chars() {
        let grow = 1 + spellings(c).len();
        if is_special(c) && out.len() * grow > MAX_SPELLINGS && out.iter().all(|o| o.len() >= 3) {
            break;
        }
        let mut forms = vec![c.to_string()];
        forms.extend(spellings(c));
        out = out
            .iter()
            .flat_map(|o| forms.iter().map(move |f| format!("{o}{f}")))
            .collect();
    }
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn re(p: &str) -> regex_automata::meta::Regex {
        regex_automata::meta::Regex::new(&format!("^(?:{})$", wrap_forms(p).unwrap())).unwrap()
    }

    #[test]
    fn characters_match_in_every_wrapper() {
        let r = re(r#"key="[A-Za-z0-9+/]{4}""#);
        for s in [
            r#"key="ab+/""#,
            r#"key=\"ab+\/\""#,
            "key%3D%22ab%2B%2F%22",
            "key%3d%22ab%2b%2f%22",
        ] {
            assert!(r.is_match(s), "{s}");
        }
        assert!(!r.is_match(r#"key="ab+/"#));
        let spaced = re("a b");
        assert!(spaced.is_match("a+b") && spaced.is_match("a%20b"));
    }

    #[test]
    fn broad_classes_end_at_an_escaped_quote() {
        let r = re(r#"v=([^"\r\n]+)"#);
        assert!(r.is_match(r"v=p%26ss\\x"));
        let m = regex_automata::meta::Regex::new(&wrap_forms(r#"v=([^"\r\n]+)"#).unwrap()).unwrap();
        let hay = r#"v=hunter22\" and"#;
        let mut caps = m.create_captures();
        m.captures(hay, &mut caps);
        assert_eq!(&hay[caps.get_group(1).unwrap().range()], "hunter22");
    }

    #[test]
    fn trigger_spellings() {
        let f = trigger_forms("://");
        assert!(f.contains(&"://".to_string()) && f.contains(&"%3a%2f%2f".to_string()));
        assert!(f.contains(&r":\/\/".to_string()));
        assert_eq!(trigger_forms("https://hooks").len(), 6);
        assert!(trigger_forms("sig=").contains(&"sig%3d".to_string()));
        assert_eq!(trigger_forms("ghp_"), vec!["ghp_".to_string()]);
    }
}
