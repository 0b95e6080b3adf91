//! The table of secret formats: one stable rule name per pattern.
//!
//! Each pattern either redacts its whole match or, when it has a capture group, only the first
//! group that took part (the password in a URL, the value of an assignment). Patterns are tried
//! leftmost-first; at the same start position an earlier rule wins.

/// ASCII word boundary: the lazy DFA supports it on any input, unlike the Unicode one.
const B: &str = r"(?-u:\b)";

/// A rule: its metrics name, its regular expression and where its matches start.
pub struct Rule {
    pub name: &'static str,
    pub pattern: String,
    /// Token formats are checked for placeholders (`EXAMPLE`, `xxxx`, low variety) after matching.
    pub token_like: bool,
    /// Literals (ASCII, matched case-insensitively) of which every match starts with one: the
    /// rule's regex runs only where one of them is found.
    pub triggers: &'static [&'static str],
    /// The most bytes a match may span from its start before the rule gives up (see
    /// `scrub::engine` for what happens at the bound).
    pub max_len: usize,
}

/// Bound of a match for most rules: no credential of these formats comes near it.
pub const MAX_MATCH: usize = 4 * 1024;

/// Bound of a PEM block: an RSA 16384-bit private key is about 12.8 KB of PEM.
pub const MAX_PEM: usize = 16 * 1024;

fn rule(
    name: &'static str,
    pattern: String,
    token_like: bool,
    triggers: &'static [&'static str],
) -> Rule {
    Rule {
        name,
        pattern,
        token_like,
        triggers,
        max_len: MAX_MATCH,
    }
}

/// The words of [`SECRET_WORD`] as literals, each spelling of each word.
const SECRET_WORDS: &[&str] = &[
    "password",
    "passwd",
    "passphrase",
    "secret",
    "api_key",
    "api-key",
    "apikey",
    "access_key",
    "access-key",
    "accesskey",
    "private_key",
    "private-key",
    "privatekey",
    "token",
];

/// Every trigger literal of the built-in rules, once each (ASCII case ignored).
pub fn triggers() -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for r in builtin() {
        for t in r.triggers {
            if !out.iter().any(|o| o.eq_ignore_ascii_case(t)) {
                out.push(t);
            }
        }
    }
    out
}

/// Words that make a key's value a secret in `key = value`, `"key": "value"`, `key: value`,
/// `?key=value`. The match starts at the word (`DB_PASSWORD=` matches from `PASSWORD`), which
/// keeps a literal prefix for the regex engine's prefilter.
///
/// Written as a trie (`password|passwd|passphrase|private_key|secret|api_key|access_key|token`,
/// `_` or `-` or nothing before `key`), so that after each byte one branch remains: the
/// assignment rules are then one-pass, and their capture group is found in one quick pass.
pub const SECRET_WORD: &str =
    r"(?i:p(?:ass(?:w(?:or)?d|phrase)|rivate[_-]?key)|secret|a(?:pi|ccess)[_-]?key|token)";

/// A whole key (e.g. of a JSON object) whose value is a secret.
pub fn secret_key_pattern() -> String {
    format!(r"^(?i:[a-z0-9_.-]{{0,40}}){SECRET_WORD}$")
}

/// What every word of `SECRET_WORD` ends with; kept in step with it by a test.
const SECRET_WORD_ENDINGS: [&str; 6] =
    ["password", "passwd", "passphrase", "secret", "key", "token"];

/// Whether `key` can match `secret_key_pattern` at all: an ASCII key must end with a secret
/// word's ending, which rules most keys out without the regex. Non-ASCII keys always go to the
/// regex, whose case folding knows more than ASCII (e.g. the Kelvin sign for `k`).
pub fn may_be_secret_key(key: &str) -> bool {
    let k = key.as_bytes();
    !key.is_ascii()
        || SECRET_WORD_ENDINGS.iter().any(|e| {
            k.len() >= e.len() && k[k.len() - e.len()..].eq_ignore_ascii_case(e.as_bytes())
        })
}

/// The built-in rules, in priority order.
pub fn builtin() -> Vec<Rule> {
    let tok = |name, p: &str, triggers| rule(name, format!("{B}{p}"), true, triggers);
    // The value of `key = value`, `"key": "value"`, `key: value`, `?key=value`: quoted and
    // unquoted values are two patterns, so that an unclosed quote (which runs to the end of its
    // line) does not keep the unquoted form from being tried inside it. The key word is matched with ASCII case
    // folding, as its triggers are (Unicode folding would let `ſecret` match, where no trigger is).
    // The operators are `=`, `:`, `=>` and `:=`; before an unquoted value `:=` is `:` and a value
    // starting with `=` (as the alternation `=|:|=>|:=` tried in order would take it).
    let assignment = |operator: &str, value: &str| {
        rule(
            "assignment",
            format!(r#"(?-u:{SECRET_WORD})["']?[ \t]*(?:{operator})[ \t]*{value}"#),
            false,
            SECRET_WORDS,
        )
    };
    vec![
        Rule {
            max_len: MAX_PEM,
            ..rule(
                "pem_private_key",
                r"-----BEGIN[ A-Z0-9]{0,40}PRIVATE KEY(?: BLOCK)?-----[A-Za-z0-9+/=\s\\:,-]+?-----END[ A-Z0-9]{0,40}PRIVATE KEY(?: BLOCK)?-----".to_string(),
                false,
                &["-----BEGIN"],
            )
        },
        tok("age_secret_key", r"AGE-SECRET-KEY-1[02-9AC-HJ-NP-Z]{58}", &["AGE-SECRET-KEY-1"]),
        tok("anthropic_key", r"sk-ant-(?:api|admin|sid|oat)[0-9]{2}-[A-Za-z0-9_-]{20,}", &["sk-"]),
        tok("openrouter_key", r"sk-or-v1-[0-9a-f]{64}", &["sk-"]),
        tok("openai_key", r"sk-(?:proj|svcacct|admin|None)-[A-Za-z0-9_-]{20,}", &["sk-"]),
        tok("openai_key", r"sk-[A-Za-z0-9_-]{20,}", &["sk-"]),
        tok("stripe_secret_key", r"(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{20,}", &["sk_", "rk_"]),
        tok("xai_key", r"xai-[A-Za-z0-9]{40,}", &["xai-"]),
        tok("groq_key", r"gsk_[A-Za-z0-9]{40,64}", &["gsk_"]),
        tok("huggingface_token", r"hf_[A-Za-z0-9]{30,40}", &["hf_"]),
        tok("replicate_token", r"r8_[A-Za-z0-9]{30,40}", &["r8_"]),
        tok("perplexity_key", r"pplx-[A-Za-z0-9]{40,64}", &["pplx-"]),
        tok(
            "github_token",
            r"(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})",
            &["ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"],
        ),
        tok("gitlab_token", r"glpat-[A-Za-z0-9_-]{20,64}", &["glpat-"]),
        tok("slack_token", r"xox[abposr]-[A-Za-z0-9-]{10,}", &["xox"]),
        rule(
            "slack_webhook",
            r"https://hooks\.slack\.com/((?:services|workflows|triggers)/[A-Za-z0-9+/_-]{20,})".to_string(),
            false,
            &["https://hooks.slack.com/"],
        ),
        tok("google_api_key", r"AIza[0-9A-Za-z_-]{35}", &["AIza"]),
        tok("google_oauth_token", r"ya29\.[0-9A-Za-z_-]{20,}", &["ya29."]),
        tok(
            "aws_access_key_id",
            &format!(r"(?:AKIA|ASIA|ABIA|ACCA|A3T[A-Z0-9])[A-Z0-9]{{16}}{B}"),
            &["AKIA", "ASIA", "ABIA", "ACCA", "A3T"],
        ),
        rule(
            "aws_secret_key",
            format!(
                r#"{B}(?i-u:aws)[A-Za-z0-9_ .-]{{0,24}}(?i-u:secret)[A-Za-z0-9_ .-]{{0,24}}["']?\s*(?:[:=]|=>|\s)\s*["']?([A-Za-z0-9/+]{{40}}){B}"#
            ),
            true,
            &["aws"],
        ),
        tok("npm_token", r"npm_[A-Za-z0-9]{36}", &["npm_"]),
        tok("pypi_token", r"pypi-AgEIcHlwaS5vcmc[A-Za-z0-9_-]{50,}", &["pypi-"]),
        tok("sendgrid_key", r"SG\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43}", &["SG."]),
        tok(
            "digitalocean_token",
            r"do[por]_v1_[a-f0-9]{64}",
            &["dop_v1_", "doo_v1_", "dor_v1_"],
        ),
        tok("databricks_token", r"dapi[a-f0-9]{32}(?:-[0-9])?", &["dapi"]),
        tok("vault_token", r"hv[sbr]\.[A-Za-z0-9_-]{24,}", &["hvs.", "hvb.", "hvr."]),
        tok("twilio_key", &format!(r"SK[0-9a-f]{{32}}{B}"), &["SK"]),
        tok(
            "shopify_token",
            r"shp(?:at|ca|pa|ss)_[a-fA-F0-9]{32}",
            &["shpat_", "shpca_", "shppa_", "shpss_"],
        ),
        tok("linear_key", r"lin_api_[A-Za-z0-9]{40}", &["lin_api_"]),
        tok(
            "jwt",
            r"eyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}",
            &["eyJ"],
        ),
        rule(
            "bearer",
            format!(
                r#"{B}(?i-u:authorization|proxy-authorization)["']?\s*[:=]\s*["']?(?i:bearer|token)\s+([A-Za-z0-9._~+/-]{{8,}}=*)"#
            ),
            false,
            &["authorization", "proxy-authorization"],
        ),
        rule(
            "basic_auth",
            format!(r#"{B}(?i-u:basic)\s+([A-Za-z0-9+/]{{8,}}={{0,2}})"#),
            false,
            &["basic"],
        ),
        rule(
            "bearer",
            format!(r"{B}(?i-u:bearer)\s+([A-Za-z0-9._~+/-]{{16,}}=*)"),
            true,
            &["bearer"],
        ),
        rule(
            "url_password",
            r#"://[^\s:/?#@"'<>\[\]]+:([^\s/?#@"'<>]+)@"#.to_string(),
            false,
            &["://"],
        ),
        assignment("=>?|:=?", r#"(?:"([^"\r\n]+)"|'([^'\r\n]+)')"#),
        assignment("=>?|:", r#"([^\s"'&,;<>(){}\[\]]+)"#),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_secret_key_passes_the_ending_filter() {
        let key = regex_automata::meta::Regex::new(&secret_key_pattern()).unwrap();
        let word = regex_automata::meta::Regex::new(&format!("^{SECRET_WORD}$")).unwrap();
        // The spelled-out secret words are among the triggers (the assignment rule needs them).
        let words: Vec<&str> = SECRET_WORDS.to_vec();
        assert!(words.iter().all(|w| word.is_match(w)));
        assert!(words.iter().all(|w| triggers().contains(w)));
        for w in &words {
            for prefix in ["", "db_", "X.", "my-", "OPENAI_", "a1"] {
                for k in [
                    format!("{prefix}{w}"),
                    format!("{prefix}{}", w.to_uppercase()),
                    format!("{prefix}{w}s"),
                    format!("{prefix}{w}_id"),
                ] {
                    if key.is_match(&k) {
                        assert!(may_be_secret_key(&k), "{k} matches but is filtered out");
                    }
                }
                assert!(key.is_match(&format!("{prefix}{w}")));
            }
        }
    }

    /// Every string a rule matches starts with one of its triggers (ASCII case ignored): the
    /// engine runs a rule only where a trigger is, so a missing one would hide secrets. Walks the
    /// rule's automaton over every byte string that can begin a match, until a trigger is
    /// complete or the automaton dies; states reached by several spellings are visited once.
    #[test]
    fn every_match_starts_with_a_trigger_of_its_rule() {
        use regex_automata::hybrid::dfa::DFA;
        use regex_automata::util::start;
        use regex_automata::Anchored;
        for r in builtin() {
            let dfa = DFA::new(&r.pattern).unwrap();
            let mut cache = dfa.create_cache();
            // After a space, so that a leading word boundary holds.
            let config = start::Config::new()
                .anchored(Anchored::Yes)
                .look_behind(Some(b' '));
            let start = dfa.start_state(&mut cache, &config).unwrap();
            let all: Vec<usize> = (0..r.triggers.len()).collect();
            let mut todo = vec![(start, 0usize, all, Vec::<u8>::new())];
            let mut seen = std::collections::HashSet::new();
            while let Some((state, depth, alive, path)) = todo.pop() {
                if !seen.insert((state, depth, alive.clone())) {
                    continue;
                }
                for b in 0..=255u8 {
                    let next = dfa.next_state(&mut cache, state, b).unwrap();
                    if next.is_dead() {
                        continue;
                    }
                    let mut path = path.clone();
                    path.push(b);
                    let still: Vec<usize> = alive
                        .iter()
                        .copied()
                        .filter(|&t| r.triggers[t].as_bytes()[depth].eq_ignore_ascii_case(&b))
                        .collect();
                    assert!(
                        !still.is_empty() && !next.is_match(),
                        "{}: a match may start with {:?}, which none of its triggers begins",
                        r.name,
                        String::from_utf8_lossy(&path)
                    );
                    if still.iter().any(|&t| r.triggers[t].len() == depth + 1) {
                        continue;
                    }
                    todo.push((next, depth + 1, still, path));
                }
            }
        }
    }

    /// A rule with a capture group whose match can be long is one-pass: the engine then finds the
    /// group in one quick pass over the match (a backtracking search over a match of several
    /// kilobytes would cost more than the scan).
    #[test]
    fn rules_with_long_values_find_their_group_in_one_pass() {
        for r in builtin() {
            let groups = regex_automata::meta::Regex::new(&r.pattern)
                .unwrap()
                .group_info()
                .group_len(regex_automata::PatternID::ZERO);
            // aws_secret_key's match is at most about a hundred bytes.
            if groups > 1 && r.name != "aws_secret_key" {
                assert!(
                    regex_automata::dfa::onepass::DFA::new(&r.pattern).is_ok(),
                    "{} is not one-pass",
                    r.name
                );
            }
        }
    }

    #[test]
    fn bounds_are_set() {
        for r in builtin() {
            assert!(r.max_len >= MAX_MATCH, "{}", r.name);
            assert!(!r.triggers.is_empty(), "{}", r.name);
        }
    }
}
