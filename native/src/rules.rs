//! The rule table: what a secret looks like, one entry per credential family.
//!
//! The table is TOML text (the package's `iir/policy/scrub_rules.toml`, handed over by the Python
//! layer; see that file for the fields), parsed here into [`Rule`]s. Operators add rules in
//! gitleaks' format ([`parse_gitleaks`]): their Go regexes are translated to this engine's syntax,
//! and each rule's start literals are derived from its regex.
//!
//! Each pattern either redacts its whole match or, when it has a capture group, its secret group
//! (the first group that took part, unless the entry names one). Patterns are tried
//! leftmost-first; at the same start position an earlier rule wins.

use serde::Deserialize;

/// ASCII word boundary: the lazy DFA supports it on any input, unlike the Unicode one.
const B: &str = r"(?-u:\b)";

/// Bound of a match for most rules: no credential of these formats comes near it.
pub const MAX_MATCH: usize = 4 * 1024;

/// Bound of a PEM block: an RSA 16384-bit private key is about 12.8 KB of PEM.
pub const MAX_PEM: usize = 16 * 1024;

/// Most start literals one rule may have (after ASCII case folding).
const MAX_TRIGGERS: usize = 64;

/// How a rule's matches are checked (see `scrub::accept`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A token of a known format: its prefix and alphabet identify it; it must sit on token
    /// boundaries.
    Token,
    /// A vendor name near an assignment, then a value that must look like a credential.
    Keyword,
    /// A pattern with its own context (a header, a command line, a connection string) whose
    /// secret group must look like a credential.
    Context,
    /// `password = value` and friends: the value must not be a placeholder.
    Assignment,
    /// The password of `scheme://user:password@host`.
    UrlPassword,
    /// `Basic <base64 of user:password>`.
    BasicAuth,
    /// `Bearer <token>`.
    Bearer,
    /// A PEM private key block.
    Pem,
    /// A literal secret of this process (never a placeholder).
    Env,
}

impl Kind {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "token" => Kind::Token,
            "keyword" => Kind::Keyword,
            "context" => Kind::Context,
            "assignment" => Kind::Assignment,
            "url_password" => Kind::UrlPassword,
            "basic_auth" => Kind::BasicAuth,
            "bearer" => Kind::Bearer,
            "pem" => Kind::Pem,
            _ => return None,
        })
    }
}

/// A checksum that vouches for a token: a token that passes it is taken even if its letters look
/// patterned; one that fails it goes through the ordinary checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Checksum {
    /// GitHub's and npm's formats: the last six characters are the CRC32 of the random part
    /// (between the prefix's `_` and the checksum), in base62.
    Crc32Base62,
}

/// Look-alike filters: checks a secret must pass beyond its pattern.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Filters {
    /// It holds a digit (random key material nearly always does; identifiers and words rarely).
    pub digit: bool,
    /// It holds a letter.
    pub letter: bool,
    /// It decodes (base64) to a PEM private key.
    pub pem_base64: bool,
    /// Its first part decodes (base64url) to a JSON object.
    pub jwt: bool,
    /// It may start inside a word (no token boundary before it).
    pub inside_word: bool,
    /// Its match starts at a word's start (after an escape such as `%20` or `\n` too): what
    /// `\b` says in plain text, in every wrapper.
    pub word_start: bool,
}

impl Filters {
    fn set(&mut self, name: &str) -> Result<(), String> {
        match name {
            "digit" => self.digit = true,
            "letter" => self.letter = true,
            "pem-base64" => self.pem_base64 = true,
            "jwt" => self.jwt = true,
            "inside-word" => self.inside_word = true,
            "word-start" => self.word_start = true,
            _ => return Err(format!("unknown filter {name:?}")),
        }
        Ok(())
    }
}

/// What an operator's allowlist is matched against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Secret,
    Match,
    Line,
}

/// An allowlist of an operator's rule: a secret it matches is not redacted.
#[derive(Clone, Debug)]
pub struct Allow {
    pub regexes: Vec<regex_automata::meta::Regex>,
    /// Lowercase words: a secret that contains one is kept.
    pub stopwords: Vec<String>,
    pub target: Target,
    /// Both the regexes and the stopwords must agree (gitleaks' `condition = "AND"`).
    pub all: bool,
}

/// How a rule's matches are told from look-alikes.
#[derive(Clone, Debug)]
pub struct Check {
    pub kind: Kind,
    /// Least Shannon entropy (bits per character) of the secret; 0 for none.
    pub entropy: f64,
    pub filters: Filters,
    pub checksum: Option<Checksum>,
    /// The capture group that holds the secret (None: the first that took part).
    pub secret_group: Option<usize>,
    pub allow: Vec<Allow>,
}

impl Check {
    pub fn new(kind: Kind) -> Self {
        Self {
            kind,
            entropy: 0.0,
            filters: Filters::default(),
            checksum: None,
            secret_group: None,
            allow: Vec::new(),
        }
    }
}

/// A rule: its metrics name, its regular expression, where its matches start, and how they are
/// checked.
#[derive(Clone, Debug)]
pub struct Rule {
    pub name: String,
    pub pattern: String,
    /// Literals (ASCII, matched case-insensitively) of which every match starts with one: the
    /// rule's regex runs only where one of them is found.
    pub triggers: Vec<String>,
    /// The most bytes a match may span from its start before the rule gives up (see
    /// `scrub::engine` for what happens at the bound).
    pub max_len: usize,
    pub check: Check,
}

/// A rule file that cannot be used: which rule, on which line, and why.
#[derive(Debug, Clone)]
pub struct RulesError {
    pub line: Option<usize>,
    pub rule: Option<String>,
    pub message: String,
}

impl std::fmt::Display for RulesError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.rule, self.line) {
            (Some(r), Some(l)) => write!(f, "rule {r:?} (line {l}): {}", self.message),
            (Some(r), None) => write!(f, "rule {r:?}: {}", self.message),
            (None, Some(l)) => write!(f, "line {l}: {}", self.message),
            (None, None) => f.write_str(&self.message),
        }
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

fn toml_error(text: &str, e: toml::de::Error) -> RulesError {
    let message = e.message().trim().to_string();
    RulesError {
        line: e.span().map(|s| line_of(text, s.start)),
        rule: None,
        message,
    }
}

/// The words of [`SECRET_WORD`] as literals, each spelling of each word.
pub const SECRET_WORDS: &[&str] = &[
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

/// The pieces a table pattern may name in braces (`{B64}`), so that every rule spells a base64
/// character, a quote or an assignment the same way. Patterns are written for plain text; their
/// JSON-escaped and URL-encoded forms are added by [`crate::scrub::forms`].
pub const FRAGMENTS: &[(&str, &str)] = &[
    ("B", B),
    ("SECRET_WORD", SECRET_WORD),
    ("B64", r"[A-Za-z0-9+/]"),
    ("PAD", r"="),
    ("Q", r#"["'`]"#),
    ("S", r"[ \t]"),
];

/// What follows a vendor name up to its value: the rest of the key (`_API_TOKEN`, `.apiKey`), an
/// optional closing quote, then an assignment in one of the forms configuration takes (`=`, `:`,
/// `=>`, `:=`, XML's `>`, a call's `", "`, an XML attribute's `" value="`), then an optional
/// opening quote.
const KEYWORD_GLUE: &str =
    r"[A-Za-z0-9_.-]{0,32}{Q}?{S}{0,4}(?:[:=]{1,2}>?|>|,|(?i-u:value){S}{0,4}=){S}{0,4}{Q}?";

/// Replace `{NAME}` by its fragment; other braces (repetition counts) are left as they are.
pub fn expand(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len() * 2);
    let mut rest = pattern;
    'outer: while let Some(i) = rest.find('{') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        for (name, frag) in FRAGMENTS {
            let key = format!("{{{name}}}");
            if tail.starts_with(&key) {
                out.push_str(frag);
                rest = &tail[key.len()..];
                continue 'outer;
            }
        }
        out.push('{');
        rest = &tail[1..];
    }
    out.push_str(rest);
    out
}

/// One entry of the table, as written.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub id: String,
    /// The metrics name, when several entries report as one (default: the id).
    pub name: Option<String>,
    pub vendor: String,
    pub description: String,
    #[serde(default = "default_kind")]
    pub kind: String,
    /// Start literals; for a keyword rule, the vendor names.
    pub triggers: Vec<String>,
    /// The token (`token`), the value after the vendor name (`keyword`), or the whole pattern.
    pub pattern: String,
    pub secret_group: Option<usize>,
    pub entropy: Option<f64>,
    #[serde(default)]
    pub filters: Vec<String>,
    pub checksum: Option<String>,
    pub max_len: Option<usize>,
    #[serde(default)]
    pub tp: Vec<String>,
    #[serde(default)]
    pub fp: Vec<String>,
}

fn default_kind() -> String {
    "token".to_string()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Table {
    rule: Vec<toml::Spanned<Entry>>,
}

/// The entries of a table, with the line each starts on.
pub fn table_entries(text: &str) -> Result<Vec<(usize, Entry)>, RulesError> {
    let table: Table = toml::from_str(text).map_err(|e| toml_error(text, e))?;
    Ok(table
        .rule
        .into_iter()
        .map(|s| (line_of(text, s.span().start), s.into_inner()))
        .collect())
}

/// Whether `name` is a rule name: lowercase ASCII letters, digits and `_`.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

impl Entry {
    /// The rule this entry stands for.
    pub fn rule(&self) -> Result<Rule, String> {
        let name = self.name.clone().unwrap_or_else(|| self.id.clone());
        if !valid_name(&self.id) || !valid_name(&name) {
            return Err("ids and names are lowercase letters, digits and `_`".into());
        }
        let kind =
            Kind::parse(&self.kind).ok_or_else(|| format!("unknown kind {:?}", self.kind))?;
        if self.triggers.is_empty()
            || self
                .triggers
                .iter()
                .any(|t| t.is_empty() || !t.is_ascii() || t.len() > 64)
        {
            return Err("triggers must be non-empty ASCII literals".into());
        }
        let pattern = match kind {
            Kind::Keyword => {
                let words: Vec<String> = self
                    .triggers
                    .iter()
                    .map(|t| super::scrub::escape_literal(t))
                    .collect();
                format!(
                    "(?i-u:{}){}({})",
                    words.join("|"),
                    expand(KEYWORD_GLUE),
                    expand(&self.pattern)
                )
            }
            _ => expand(&self.pattern),
        };
        let pattern = crate::scrub::forms::wrap_forms(&pattern)?;
        let triggers = all_forms(&self.triggers);
        let mut check = Check::new(kind);
        check.entropy = self.entropy.unwrap_or(match kind {
            Kind::Keyword | Kind::Context => 3.0,
            _ => 0.0,
        });
        for f in &self.filters {
            check.filters.set(f)?;
        }
        if kind == Kind::Keyword {
            // A vendor name may sit inside a key; its value holds a digit and a letter.
            check.filters.inside_word = true;
            check.filters.digit = true;
            check.filters.letter = true;
        }
        check.checksum = match self.checksum.as_deref() {
            None => None,
            Some("crc32-base62") => Some(Checksum::Crc32Base62),
            Some(other) => return Err(format!("unknown checksum {other:?}")),
        };
        check.secret_group = self.secret_group;
        let max_len = self.max_len.unwrap_or(if kind == Kind::Pem {
            MAX_PEM
        } else {
            MAX_MATCH
        });
        Ok(Rule {
            name,
            pattern,
            triggers,
            max_len,
            check,
        })
    }
}

/// Start literals in every wrapper's spelling, once each (ASCII case ignored).
fn all_forms(triggers: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for t in triggers {
        for f in crate::scrub::forms::trigger_forms(t) {
            if !out.iter().any(|o| o.eq_ignore_ascii_case(&f)) {
                out.push(f);
            }
        }
    }
    out
}

/// Parse the rule table (TOML text); the first entry that cannot be used is the error.
pub fn parse_table(text: &str) -> Result<Vec<Rule>, RulesError> {
    let mut out = Vec::new();
    for (line, e) in table_entries(text)? {
        let rule = e.rule().map_err(|message| RulesError {
            line: Some(line),
            rule: Some(e.id.clone()),
            message,
        })?;
        out.push(rule);
    }
    Ok(out)
}

/// Everything that makes a rule unusable by the engine: a pattern that does not compile, a match
/// that may start without one of its triggers, a capture group over a match longer than the
/// ordinary bound that needs more than one pass to find.
pub fn validate(rule: &Rule) -> Result<(), String> {
    use regex_automata::hybrid::dfa::DFA;
    use regex_automata::util::start;
    use regex_automata::Anchored;
    regex_syntax::parse(&rule.pattern).map_err(|e| short_error(&e.to_string()))?;
    let re = regex_automata::meta::Regex::new(&rule.pattern)
        .map_err(|e| format!("the pattern does not compile: {e}"))?;
    if rule.triggers.len() > MAX_TRIGGERS {
        return Err(format!(
            "{} start literals (at most {MAX_TRIGGERS})",
            rule.triggers.len()
        ));
    }
    let groups = re.group_info().group_len(regex_automata::PatternID::ZERO);
    if let Some(g) = rule.check.secret_group {
        if g >= groups {
            return Err(format!(
                "secret group {g}, but the pattern has {} groups",
                groups - 1
            ));
        }
    }
    // The secret group is found by a second search over the match, which the rule's bound
    // limits; over a match longer than the ordinary bound that search must be one pass.
    if groups > 1
        && rule.max_len > MAX_MATCH
        && regex_automata::dfa::onepass::DFA::new(&rule.pattern).is_err()
    {
        return Err(format!(
            "a capture group over a match of up to {} bytes must be found in one pass (make \
             the pattern unambiguous, or lower its bound)",
            rule.max_len
        ));
    }
    // Every string the rule matches starts with one of its triggers (ASCII case ignored): walk
    // the rule's automaton over every byte string that can begin a match, until a trigger is
    // complete or the automaton dies; states reached by several spellings are visited once.
    let dfa = DFA::new(&rule.pattern).map_err(|e| format!("the pattern does not compile: {e}"))?;
    let mut cache = dfa.create_cache();
    // After a space, so that a leading word boundary holds.
    let config = start::Config::new()
        .anchored(Anchored::Yes)
        .look_behind(Some(b' '));
    let start = dfa
        .start_state(&mut cache, &config)
        .map_err(|e| e.to_string())?;
    let triggers: Vec<&[u8]> = rule.triggers.iter().map(|t| t.as_bytes()).collect();
    let all: Vec<usize> = (0..triggers.len()).collect();
    let mut todo = vec![(start, 0usize, all, Vec::<u8>::new())];
    let mut seen = std::collections::HashSet::new();
    while let Some((state, depth, alive, path)) = todo.pop() {
        if !seen.insert((state, depth, alive.clone())) {
            continue;
        }
        for b in 0..=255u8 {
            let next = dfa
                .next_state(&mut cache, state, b)
                .map_err(|e| e.to_string())?;
            if next.is_dead() {
                continue;
            }
            let mut path = path.clone();
            path.push(b);
            let still: Vec<usize> = alive
                .iter()
                .copied()
                .filter(|&t| triggers[t][depth].eq_ignore_ascii_case(&b))
                .collect();
            if still.is_empty() || next.is_match() {
                return Err(format!(
                    "a match may start with {:?}, which none of its start literals begins",
                    String::from_utf8_lossy(&path)
                ));
            }
            if still.iter().any(|&t| triggers[t].len() == depth + 1) {
                continue;
            }
            todo.push((next, depth + 1, still, path));
        }
    }
    Ok(())
}

/// The first line of a regex-syntax error, which otherwise repeats the pattern with a caret.
fn short_error(e: &str) -> String {
    let last = e.lines().rev().find(|l| l.starts_with("error:"));
    format!(
        "the pattern does not compile: {}",
        last.map_or(e, |l| l.trim_start_matches("error:").trim())
    )
}

// ---------------------------------------------------------------------------------------------
// gitleaks' rule format

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct GlAllow {
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    condition: Option<String>,
    #[serde(default)]
    regexes: Vec<String>,
    #[serde(default)]
    regex_target: Option<String>,
    #[serde(default)]
    stopwords: Vec<String>,
    // Files and commits do not exist at the gateway: accepted, and never match.
    #[serde(default)]
    paths: Vec<String>,
    #[serde(default)]
    commits: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GlRule {
    id: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    regex: Option<String>,
    #[serde(default)]
    secret_group: Option<usize>,
    #[serde(default)]
    entropy: Option<f64>,
    #[serde(default)]
    keywords: Vec<String>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    allowlist: Option<GlAllow>,
    #[serde(default)]
    allowlists: Vec<GlAllow>,
    #[serde(default)]
    skip_report: Option<bool>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GlFile {
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    extend: Option<toml::Table>,
    #[serde(default)]
    rules: Vec<toml::Spanned<GlRule>>,
    #[serde(default)]
    allowlist: Option<GlAllow>,
    #[serde(default)]
    allowlists: Vec<GlAllow>,
}

/// Rules in gitleaks' TOML format (`[[rules]]` with `id`, `regex`, `secretGroup`, `entropy`,
/// `keywords`, allowlists). Each regex (Go's RE2 syntax) is translated to this engine's syntax
/// ([`translate_go`]), its start literals are derived from it ([`derive_triggers`]), and the
/// result is checked as the built-in rules are ([`validate`]). Rule names get the prefix `user_`
/// (metrics labels stay apart from the built-in ones). Rules that only match file paths are
/// skipped: the gateway scans text, not files. So are rules whose matches may start anywhere
/// (gitleaks finds them through a keyword in the middle; this engine runs a rule only where a
/// literal it starts with is found, which keeps a scan linear): they are listed in
/// [`GitleaksRules::skipped`], for the operator to see.
pub fn parse_gitleaks(text: &str) -> Result<GitleaksRules, RulesError> {
    let file: GlFile = toml::from_str(text).map_err(|e| toml_error(text, e))?;
    let _ = (&file.title, &file.extend);
    let global: Vec<Allow> = file
        .allowlist
        .into_iter()
        .chain(file.allowlists)
        .map(|a| gl_allow(a, None))
        .collect::<Result<_, _>>()
        .map_err(|message| RulesError {
            line: None,
            rule: None,
            message: format!("global allowlist: {message}"),
        })?;
    let mut out: Vec<Rule> = Vec::new();
    let mut skipped: Vec<RulesError> = Vec::new();
    for spanned in file.rules {
        let line = line_of(text, spanned.span().start);
        let r = spanned.into_inner();
        let err = |message: String| RulesError {
            line: Some(line),
            rule: Some(r.id.clone()),
            message,
        };
        let _ = (&r.description, &r.tags, &r.keywords, &r.skip_report);
        let Some(regex) = r.regex.as_deref() else {
            if r.path.is_some() {
                continue;
            }
            return Err(err("a rule needs a `regex`".into()));
        };
        let translated = translate_go(regex).map_err(err)?;
        let derived = match derive_triggers(&translated) {
            Ok(found) => found,
            Err(Unanchored::Anywhere(message)) => {
                skipped.push(err(message));
                continue;
            }
            Err(Unanchored::Bad(message)) => return Err(err(message)),
        };
        let pattern = crate::scrub::forms::wrap_forms(&derived.pattern).map_err(err)?;
        let triggers = all_forms(&derived.triggers);
        let mut check = Check::new(Kind::Context);
        check.entropy = r.entropy.unwrap_or(0.0);
        check.secret_group = r.secret_group.filter(|&g| g > 0);
        check.filters.inside_word = true;
        check.filters.word_start = derived.word_start;
        for a in r.allowlist.into_iter().chain(r.allowlists) {
            check
                .allow
                .push(gl_allow(a, Some(&translated)).map_err(err)?);
        }
        check.allow.extend(global.iter().cloned());
        let name: String = format!("user_{}", r.id)
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .take(64)
            .collect();
        let rule = Rule {
            name,
            pattern,
            triggers,
            max_len: MAX_MATCH,
            check,
        };
        validate(&rule).map_err(err)?;
        out.push(rule);
    }
    Ok(GitleaksRules {
        rules: out,
        skipped,
    })
}

/// What an operator's gitleaks file gives: the rules to run, and the rules left out because
/// their matches may start anywhere (each with its line and why).
pub struct GitleaksRules {
    pub rules: Vec<Rule>,
    pub skipped: Vec<RulesError>,
}

impl std::fmt::Debug for GitleaksRules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitleaksRules")
            .field("rules", &self.rules.len())
            .field("skipped", &self.skipped)
            .finish()
    }
}

/// Why a pattern has no start literals: it may start anywhere (a rule this engine cannot run
/// where a literal is found), or it does not parse.
#[derive(Debug)]
pub enum Unanchored {
    Anywhere(String),
    Bad(String),
}

impl std::fmt::Display for Unanchored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Anywhere(m) | Self::Bad(m) => f.write_str(m),
        }
    }
}

fn gl_allow(a: GlAllow, _rule: Option<&str>) -> Result<Allow, String> {
    let _ = (&a.description, &a.paths, &a.commits);
    let target = match a.regex_target.as_deref() {
        None | Some("secret") => Target::Secret,
        Some("match") => Target::Match,
        Some("line") => Target::Line,
        Some(other) => return Err(format!("unknown regexTarget {other:?}")),
    };
    let all = match a
        .condition
        .as_deref()
        .map(str::to_ascii_uppercase)
        .as_deref()
    {
        None | Some("OR") => false,
        Some("AND") => true,
        Some(other) => return Err(format!("unknown allowlist condition {other:?}")),
    };
    let regexes = a
        .regexes
        .iter()
        .map(|r| {
            let t = translate_go(r)?;
            regex_automata::meta::Regex::new(&t)
                .map_err(|e| format!("allowlist regex {r:?} does not compile: {e}"))
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(Allow {
        regexes,
        stopwords: a.stopwords.iter().map(|s| s.to_ascii_lowercase()).collect(),
        target,
        all,
    })
}

/// The ASCII classes Go means by `\d`, `\w`, `\s` (its Perl classes are ASCII-only).
fn perl_class(c: char) -> Option<(&'static str, bool)> {
    Some(match c {
        'd' => ("0-9", false),
        'D' => ("0-9", true),
        'w' => ("0-9A-Za-z_", false),
        'W' => ("0-9A-Za-z_", true),
        's' => (r"\t\n\f\r ", false),
        'S' => (r"\t\n\f\r ", true),
        _ => return None,
    })
}

/// Translate a Go (RE2) regex to this engine's syntax with the same meaning.
///
/// The result runs with Unicode off (`(?-u)`), so that `\b`, `\w`, `\d`, `\s` and case folding
/// are ASCII as in Go (and a case-insensitive literal has ASCII spellings only, which start
/// literals need); what must match a whole character (`.`, a negated class, `\p{..}`, a class
/// with non-ASCII members) is put back in Unicode mode. Character classes are rewritten so that
/// what this engine reads as set operators (`&&`, `--`, `~~`, a nested `[`) stays literal.
pub fn translate_go(re: &str) -> Result<String, String> {
    let chars: Vec<char> = re.chars().collect();
    let mut out = String::from("(?-u)");
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\\' => {
                let Some(&n) = chars.get(i + 1) else {
                    return Err("the regex ends with a lone backslash".into());
                };
                i += 2;
                if let Some((class, neg)) = perl_class(n) {
                    if neg {
                        out.push_str(&format!("(?u:[^{class}])"));
                    } else {
                        out.push_str(&format!("[{class}]"));
                    }
                    continue;
                }
                match n {
                    'b' => out.push_str(r"(?-u:\b)"),
                    'B' => out.push_str(r"(?-u:\B)"),
                    'Q' => {
                        let mut lit = String::new();
                        while i < chars.len()
                            && !(chars[i] == '\\' && chars.get(i + 1) == Some(&'E'))
                        {
                            lit.push(chars[i]);
                            i += 1;
                        }
                        i = (i + 2).min(chars.len().max(i));
                        out.push_str(&super::scrub::escape_literal(&lit));
                    }
                    'C' => return Err(r"`\C` (any byte) is not supported".into()),
                    'p' | 'P' => {
                        let mut esc = format!("\\{n}");
                        if chars.get(i) == Some(&'{') {
                            while i < chars.len() {
                                esc.push(chars[i]);
                                i += 1;
                                if esc.ends_with('}') {
                                    break;
                                }
                            }
                        } else if let Some(&x) = chars.get(i) {
                            esc.push(x);
                            i += 1;
                        }
                        out.push_str(&format!("(?u:{esc})"));
                    }
                    '1'..='9' => return Err(format!(r"`\{n}`: back-references are not supported")),
                    _ => {
                        out.push('\\');
                        out.push(n);
                    }
                }
            }
            '[' => {
                let (class, next) = translate_class(&chars, i)?;
                out.push_str(&class);
                i = next;
            }
            '.' => {
                out.push_str("(?u:.)");
                i += 1;
            }
            '{' => match repetition_end(&chars, i) {
                // A counted repetition, copied as it is.
                Some(end) => {
                    out.extend(&chars[i..=end]);
                    i = end + 1;
                }
                // Go reads any other brace as a literal; this engine wants it escaped.
                None => {
                    out.push_str(r"\{");
                    i += 1;
                }
            },
            '}' => {
                out.push_str(r"\}");
                i += 1;
            }
            c if !c.is_ascii() => {
                out.push_str(&format!(
                    "(?u:{})",
                    super::scrub::escape_literal(&c.to_string())
                ));
                i += 1;
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    Ok(out)
}

/// Where the counted repetition that starts at `chars[start] == '{'` ends (`{n}`, `{n,}`,
/// `{n,m}`), or `None` when the brace is a literal.
fn repetition_end(chars: &[char], start: usize) -> Option<usize> {
    let mut i = start + 1;
    let digits = |i: &mut usize| {
        let from = *i;
        while chars.get(*i).is_some_and(char::is_ascii_digit) {
            *i += 1;
        }
        *i > from
    };
    if !digits(&mut i) {
        return None;
    }
    if chars.get(i) == Some(&',') {
        i += 1;
        digits(&mut i);
    }
    (chars.get(i) == Some(&'}')).then_some(i)
}

/// Translate the class starting at `chars[start] == '['`; returns it and the index after it.
fn translate_class(chars: &[char], start: usize) -> Result<(String, usize), String> {
    let mut i = start + 1;
    let mut body = String::new();
    let mut negated = false;
    let mut unicode = false;
    if chars.get(i) == Some(&'^') {
        negated = true;
        i += 1;
    }
    let mut first = true;
    loop {
        let Some(&c) = chars.get(i) else {
            return Err("a character class is not closed".into());
        };
        match c {
            ']' if !first => {
                i += 1;
                break;
            }
            '[' if chars.get(i + 1) == Some(&':') => {
                // A POSIX class, `[:alpha:]`.
                let end = (i + 2..chars.len().saturating_sub(1))
                    .find(|&j| chars[j] == ':' && chars[j + 1] == ']')
                    .ok_or("a POSIX class is not closed")?;
                body.extend(&chars[i..end + 2]);
                i = end + 2;
            }
            '\\' => {
                let Some(&n) = chars.get(i + 1) else {
                    return Err("a character class is not closed".into());
                };
                i += 2;
                if let Some((class, neg)) = perl_class(n) {
                    if neg {
                        body.push_str(&format!("[^{class}]"));
                        unicode = true;
                    } else {
                        body.push_str(class);
                    }
                } else if n == 'p' || n == 'P' {
                    unicode = true;
                    body.push('\\');
                    body.push(n);
                    if chars.get(i) == Some(&'{') {
                        while i < chars.len() {
                            body.push(chars[i]);
                            i += 1;
                            if chars[i - 1] == '}' {
                                break;
                            }
                        }
                    } else if let Some(&x) = chars.get(i) {
                        body.push(x);
                        i += 1;
                    }
                } else {
                    body.push('\\');
                    body.push(n);
                }
            }
            '[' | '&' | '~' => {
                body.push('\\');
                body.push(c);
                i += 1;
            }
            '-' if body.ends_with('-') && !body.ends_with("\\-") => {
                body.push_str("\\-");
                i += 1;
            }
            c => {
                if !c.is_ascii() {
                    unicode = true;
                }
                body.push(c);
                i += 1;
            }
        }
        first = false;
    }
    let class = format!("[{}{body}]", if negated { "^" } else { "" });
    Ok((
        if negated || unicode {
            format!("(?u:{class})")
        } else {
            class
        },
        i,
    ))
}

/// The start literals of a pattern: what every match begins with, ASCII case folded. A leading
/// part that may match nothing and holds no capture group (gitleaks' `[\w.-]{0,50}?` before a
/// keyword) is dropped first: it only moves where a match starts, not the secret. Returns the
/// pattern to run and its literals; an error when a match could start anywhere (the rule would
/// be tried at every position of every text).
pub fn derive_triggers(pattern: &str) -> Result<Derived, Unanchored> {
    use regex_syntax::hir::{Hir, HirKind, Look};
    let hir =
        regex_syntax::parse(pattern).map_err(|e| Unanchored::Bad(short_error(&e.to_string())))?;
    // A leading word boundary becomes the engine's own check, which also takes the start of a
    // token after an escape (`%20ghp_…`, `\nghp_…`), where a regex `\b` sees a word going on.
    let (hir, word_start) = match hir.kind() {
        HirKind::Concat(items)
            if matches!(
                items.first().map(Hir::kind),
                Some(HirKind::Look(Look::WordAscii | Look::WordUnicode))
            ) =>
        {
            (Hir::concat(items[1..].to_vec()), true)
        }
        _ => (hir, false),
    };
    let (hir, mut lits) = trim_start(&hir).map_err(Unanchored::Anywhere)?;
    lits.sort();
    lits.dedup();
    // A literal that starts with another is covered by it.
    let all = lits.clone();
    lits.retain(|t| !all.iter().any(|o| o != t && t.starts_with(o.as_str())));
    if lits.len() > MAX_TRIGGERS {
        return Err(Unanchored::Anywhere(format!(
            "a match may start with {} different literals (at most {MAX_TRIGGERS})",
            lits.len()
        )));
    }
    Ok(Derived {
        pattern: hir.to_string(),
        triggers: lits,
        word_start,
    })
}

/// What [`derive_triggers`] finds: the pattern to run, its start literals, and whether a match
/// must start a token (the pattern began with a word boundary).
#[derive(Debug)]
pub struct Derived {
    pub pattern: String,
    pub triggers: Vec<String>,
    pub word_start: bool,
}

/// [`derive_triggers`] of one expression: an alternation branch by branch (gitleaks writes a
/// keyword form and a prefix form as two branches of one rule), else its leading droppable
/// parts removed until its start literals are usable.
fn trim_start(
    hir: &regex_syntax::hir::Hir,
) -> Result<(regex_syntax::hir::Hir, Vec<String>), String> {
    use regex_syntax::hir::literal::{ExtractKind, Extractor};
    use regex_syntax::hir::{Hir, HirKind};
    if let HirKind::Alternation(branches) = hir.kind() {
        let mut out = Vec::new();
        let mut lits = Vec::new();
        for b in branches {
            let (h, l) = trim_start(b)?;
            out.push(h);
            lits.extend(l);
        }
        return Ok((Hir::alternation(out), lits));
    }
    let mut parts: Vec<Hir> = match hir.kind() {
        HirKind::Concat(items) => items.clone(),
        _ => vec![hir.clone()],
    };
    let mut ext = Extractor::new();
    // A class of more than a few characters ends a literal (`xoxb-[0-9]{10}` starts with
    // `xoxb-`, not with ten literals one digit longer).
    ext.kind(ExtractKind::Prefix)
        .limit_class(4)
        .limit_total(512);
    loop {
        let current = Hir::concat(parts.clone());
        let seq = ext.extract(&current);
        let usable = seq.literals().and_then(|lits| {
            let mut out: Vec<String> = Vec::new();
            for l in lits {
                let bytes = l.as_bytes();
                let n = bytes
                    .iter()
                    .position(|b| !b.is_ascii() || b.is_ascii_control())
                    .unwrap_or(bytes.len());
                if n < 2 {
                    return None;
                }
                out.push(String::from_utf8_lossy(&bytes[..n.min(32)]).to_ascii_lowercase());
            }
            Some(out)
        });
        match usable {
            Some(lits) if !lits.is_empty() => return Ok((current, lits)),
            _ => {}
        }
        let droppable = parts.len() > 1
            && parts[0].properties().minimum_len() == Some(0)
            && parts[0].properties().explicit_captures_len() == 0;
        if !droppable {
            return Err(
                "a match may start with any character, so the rule would be tried at \
                        every position of every text; begin the regex with a literal (a prefix \
                        or a keyword such as `(?i)\\b(?:vendor)`)"
                    .into(),
            );
        }
        parts.remove(0);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The package's rule table, as the Python layer hands it over.
    pub(crate) const TABLE: &str = include_str!("../../iir/policy/scrub_rules.toml");

    pub(crate) fn builtin() -> Vec<Rule> {
        parse_table(TABLE).unwrap()
    }

    #[test]
    fn every_secret_key_passes_the_ending_filter() {
        let key = regex_automata::meta::Regex::new(&secret_key_pattern()).unwrap();
        let word = regex_automata::meta::Regex::new(&format!("^{SECRET_WORD}$")).unwrap();
        let words: Vec<&str> = SECRET_WORDS.to_vec();
        assert!(words.iter().all(|w| word.is_match(w)));
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

    /// Every rule of the table passes the checks operators' rules get at start-up.
    #[test]
    fn every_table_rule_is_valid() {
        let rules = builtin();
        assert!(rules.len() >= 200, "{} rules", rules.len());
        for r in &rules {
            validate(r).unwrap_or_else(|e| panic!("{}: {e}", r.name));
            assert!(r.max_len >= 256, "{}", r.name);
        }
        let entries = table_entries(TABLE).unwrap();
        let mut ids: Vec<&str> = entries.iter().map(|(_, e)| e.id.as_str()).collect();
        ids.sort_unstable();
        let n = ids.len();
        ids.dedup();
        assert_eq!(n, ids.len(), "rule ids are unique");
    }

    #[test]
    fn a_missing_trigger_is_named() {
        let mut r = builtin()
            .into_iter()
            .find(|r| r.name == "github_pat")
            .unwrap();
        r.triggers = vec!["ghx_".into()];
        let e = validate(&r).unwrap_err();
        assert!(e.contains("\"g"), "{e}");
    }

    #[test]
    fn go_regexes_translate() {
        let t = translate_go(
            r#"(?i)\b(adafruit)[\w.-]{0,20}[\s'"]{0,3}(?:=|:)([a-z0-9_-]{32})(?:[^\w]|$)"#,
        )
        .unwrap();
        let re = regex_automata::meta::Regex::new(&t).unwrap();
        assert!(re.is_match("ADAFRUIT_KEY =abcdefghijklmnopqrstuvwxyz012345 "));
        let d = derive_triggers(&t).unwrap();
        assert_eq!(d.triggers, vec!["adafruit".to_string()]);
        assert!(regex_automata::meta::Regex::new(&d.pattern).is_ok());
        assert!(d.word_start);
        // gitleaks' semi-generic shape: an optional identifier before the keyword is dropped.
        let t = translate_go(r#"(?i)[\w.-]{0,50}?(?:sentry)(?:[ \t\w.-]{0,20})[\s'"]{0,3}(?:=|>|:{1,3}=|\|\||:|=>|\?=|,)[\x60'"\s=]{0,5}([a-f0-9]{64})(?:[\x60'"\s;]|\\[nr]|$)"#).unwrap();
        let d = derive_triggers(&t).unwrap();
        assert_eq!(d.triggers, vec!["sentry".to_string()]);
        assert!(!d.word_start);
        assert!(translate_go(r"(a)\1").is_err());
        assert!(derive_triggers(&translate_go(r"[a-z]{32}").unwrap()).is_err());
        // Set operators of this engine stay literal characters, as in Go.
        let t = translate_go(r"x[a&&b~~c-]").unwrap();
        let re = regex_automata::meta::Regex::new(&t).unwrap();
        assert!(re.is_match("x&") && re.is_match("x~") && re.is_match("x-"));
        // Go's \w and case folding are ASCII.
        let t = translate_go(r"(?i)k\w").unwrap();
        let re = regex_automata::meta::Regex::new(&t).unwrap();
        assert!(re.is_match("Ka") && !re.is_match("\u{212a}a") && !re.is_match("ké"));
        let t = translate_go(r"a.b[^x]c").unwrap();
        let re = regex_automata::meta::Regex::new(&t).unwrap();
        assert!(re.is_match("aébéc"));
    }

    #[test]
    fn gitleaks_files_parse_and_bad_rules_name_their_line() {
        let ok = r#"
title = "team rules"
[[rules]]
id = "corp-token"
description = "Corp API token"
regex = '''\bcorp_[a-z0-9]{24}\b'''
keywords = ["corp_"]
entropy = 3.0
[[rules.allowlists]]
regexes = ['''corp_0{24}''']
"#;
        let rules = parse_gitleaks(ok).unwrap().rules;
        assert_eq!(rules[0].name, "user_corp_token");
        assert_eq!(rules[0].triggers, vec!["corp_".to_string()]);
        assert!(regex_automata::meta::Regex::new(&rules[0].pattern).is_ok());
        let bad = "[[rules]]\nid = \"a\"\nregex = 'corp_[a-z]{4}'\n\n[[rules]]\nid = \"b\"\nregex = '(x)\\1'\n";
        let e = parse_gitleaks(bad).unwrap_err();
        assert_eq!((e.rule.as_deref(), e.line), (Some("b"), Some(5)), "{e}");
        let e = parse_gitleaks("[[rules]\n").unwrap_err();
        assert_eq!(e.line, Some(1), "{e}");
        // A rule whose matches may start anywhere is left out, named with its line; the others
        // of the file still apply.
        let mixed = "[[rules]]\nid = \"mid\"\nregex = '[a-z]{3}\\dQ~[a-z]{31}'\n\n[[rules]]\nid = \"ok\"\nregex = 'corp_[a-z]{4}'\n";
        let got = parse_gitleaks(mixed).unwrap();
        assert_eq!(got.rules.len(), 1);
        assert_eq!(got.skipped.len(), 1);
        let e = &got.skipped[0];
        assert_eq!((e.rule.as_deref(), e.line), (Some("mid"), Some(1)), "{e}");
    }

    #[test]
    fn gitleaks_shapes_get_start_literals() {
        let lits = |re: &str| {
            derive_triggers(&translate_go(re).unwrap())
                .unwrap()
                .triggers
        };
        // Braces that are no repetition are literals in Go.
        let t = translate_go(r"^\$(?:\d+|{\d+})$").unwrap();
        assert!(regex_automata::meta::Regex::new(&t)
            .unwrap()
            .is_match("${12}"));
        // A class of many characters ends the literal.
        assert_eq!(
            lits(r"xoxb-[0-9]{10,13}-[a-zA-Z0-9]{24}"),
            vec!["xoxb-".to_string()]
        );
        // An alternation, branch by branch: a keyword form and a prefix form.
        let got = lits(
            r#"(?i)[\w.-]{0,50}?(?:jira)(?:[ \t\w.-]{0,20})[\s'"]{0,3}(?:=|:)([a-z0-9]{24})|\b(ATATT3[A-Za-z0-9_\-=]{186})"#,
        );
        assert_eq!(got, vec!["atatt3".to_string(), "jira".to_string()]);
    }
}
