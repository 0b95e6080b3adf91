//! The table of secret formats: one stable rule name per pattern.
//!
//! Each pattern either redacts its whole match or, when it has a capture group, only the first
//! group that took part (the password in a URL, the value of an assignment). Patterns are tried
//! leftmost-first; at the same start position an earlier rule wins.

/// ASCII word boundary: the lazy DFA supports it on any input, unlike the Unicode one.
const B: &str = r"(?-u:\b)";

/// A rule: its metrics name and its regular expression.
pub struct Rule {
    pub name: &'static str,
    pub pattern: String,
    /// Token formats are checked for placeholders (`EXAMPLE`, `xxxx`, low variety) after matching.
    pub token_like: bool,
}

fn rule(name: &'static str, pattern: String, token_like: bool) -> Rule {
    Rule {
        name,
        pattern,
        token_like,
    }
}

/// Literals (ASCII, matched case-insensitively) of which every match of a built-in rule starts
/// with one. Searching for these first lets the regex run only where a secret can begin.
pub const TRIGGERS: &[&str] = &[
    "-----BEGIN",
    "AGE-SECRET-KEY-1",
    "sk-",
    "sk_",
    "rk_",
    "xai-",
    "gsk_",
    "hf_",
    "r8_",
    "pplx-",
    "ghp_",
    "gho_",
    "ghu_",
    "ghs_",
    "ghr_",
    "github_pat_",
    "glpat-",
    "xox",
    "https://hooks.slack.com/",
    "AIza",
    "ya29.",
    "AKIA",
    "ASIA",
    "ABIA",
    "ACCA",
    "A3T",
    "aws",
    "npm_",
    "pypi-",
    "SG.",
    "dop_v1_",
    "doo_v1_",
    "dor_v1_",
    "dapi",
    "hvs.",
    "hvb.",
    "hvr.",
    "SK",
    "shpat_",
    "shpca_",
    "shppa_",
    "shpss_",
    "lin_api_",
    "eyJ",
    "authorization",
    "proxy-authorization",
    "basic",
    "bearer",
    "://",
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

/// Words that make a key's value a secret in `key = value`, `"key": "value"`, `key: value`,
/// `?key=value`. The match starts at the word (`DB_PASSWORD=` matches from `PASSWORD`), which
/// keeps a literal prefix for the regex engine's prefilter.
pub const SECRET_WORD: &str = r"(?i:password|passwd|passphrase|secret|api[_-]?key|apikey|access[_-]?key|private[_-]?key|token)";

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
    let tok = |name, p: &str| rule(name, format!("{B}{p}"), true);
    vec![
        rule(
            "pem_private_key",
            r"-----BEGIN[ A-Z0-9]{0,40}PRIVATE KEY(?: BLOCK)?-----[A-Za-z0-9+/=\s\\:,-]+?-----END[ A-Z0-9]{0,40}PRIVATE KEY(?: BLOCK)?-----".to_string(),
            false,
        ),
        tok("age_secret_key", r"AGE-SECRET-KEY-1[02-9AC-HJ-NP-Z]{58}"),
        tok("anthropic_key", r"sk-ant-(?:api|admin|sid|oat)[0-9]{2}-[A-Za-z0-9_-]{20,}"),
        tok("openrouter_key", r"sk-or-v1-[0-9a-f]{64}"),
        tok("openai_key", r"sk-(?:proj|svcacct|admin|None)-[A-Za-z0-9_-]{20,}"),
        tok("openai_key", r"sk-[A-Za-z0-9_-]{20,}"),
        tok("stripe_secret_key", r"(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{20,}"),
        tok("xai_key", r"xai-[A-Za-z0-9]{40,}"),
        tok("groq_key", r"gsk_[A-Za-z0-9]{40,64}"),
        tok("huggingface_token", r"hf_[A-Za-z0-9]{30,40}"),
        tok("replicate_token", r"r8_[A-Za-z0-9]{30,40}"),
        tok("perplexity_key", r"pplx-[A-Za-z0-9]{40,64}"),
        tok("github_token", r"(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})"),
        tok("gitlab_token", r"glpat-[A-Za-z0-9_-]{20,64}"),
        tok("slack_token", r"xox[abposr]-[A-Za-z0-9-]{10,}"),
        rule(
            "slack_webhook",
            r"https://hooks\.slack\.com/((?:services|workflows|triggers)/[A-Za-z0-9+/_-]{20,})".to_string(),
            false,
        ),
        tok("google_api_key", r"AIza[0-9A-Za-z_-]{35}"),
        tok("google_oauth_token", r"ya29\.[0-9A-Za-z_-]{20,}"),
        tok("aws_access_key_id", &format!(r"(?:AKIA|ASIA|ABIA|ACCA|A3T[A-Z0-9])[A-Z0-9]{{16}}{B}")),
        rule(
            "aws_secret_key",
            format!(
                r#"{B}(?i:aws)[A-Za-z0-9_ .-]{{0,24}}(?i:secret)[A-Za-z0-9_ .-]{{0,24}}["']?\s*(?:[:=]|=>|\s)\s*["']?([A-Za-z0-9/+]{{40}}){B}"#
            ),
            true,
        ),
        tok("npm_token", r"npm_[A-Za-z0-9]{36}"),
        tok("pypi_token", r"pypi-AgEIcHlwaS5vcmc[A-Za-z0-9_-]{50,}"),
        tok("sendgrid_key", r"SG\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43}"),
        tok("digitalocean_token", r"do[por]_v1_[a-f0-9]{64}"),
        tok("databricks_token", r"dapi[a-f0-9]{32}(?:-[0-9])?"),
        tok("vault_token", r"hv[sbr]\.[A-Za-z0-9_-]{24,}"),
        tok("twilio_key", &format!(r"SK[0-9a-f]{{32}}{B}")),
        tok("shopify_token", r"shp(?:at|ca|pa|ss)_[a-fA-F0-9]{32}"),
        tok("linear_key", r"lin_api_[A-Za-z0-9]{40}"),
        tok(
            "jwt",
            r"eyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}",
        ),
        rule(
            "bearer",
            format!(
                r#"{B}(?i:authorization|proxy-authorization)["']?\s*[:=]\s*["']?(?i:bearer|token)\s+([A-Za-z0-9._~+/-]{{8,}}=*)"#
            ),
            false,
        ),
        rule(
            "basic_auth",
            format!(r#"{B}(?i:basic)\s+([A-Za-z0-9+/]{{8,}}={{0,2}})"#),
            false,
        ),
        rule(
            "bearer",
            format!(r"{B}(?i:bearer)\s+([A-Za-z0-9._~+/-]{{16,}}=*)"),
            true,
        ),
        rule(
            "url_password",
            r#"://[^\s:/?#@"'<>\[\]]+:([^\s/?#@"'<>]+)@"#.to_string(),
            false,
        ),
        rule(
            "assignment",
            format!(
                r#"{SECRET_WORD}["']?[ \t]*(?:=|:|=>|:=)[ \t]*(?:"([^"\r\n]+)"|'([^'\r\n]+)'|([^\s"'&,;<>(){{}}\[\]]+))"#
            ),
            false,
        ),
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
        let words: Vec<&str> = TRIGGERS
            .iter()
            .copied()
            .filter(|t| word.is_match(t))
            .collect();
        assert!(words.contains(&"password") && words.contains(&"api_key") && words.len() >= 10);
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
}
