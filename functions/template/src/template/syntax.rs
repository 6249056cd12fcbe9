//! The syntax of Packer's `{{ ... }}` actions: Go `text/template` actions restricted to
//! what Packer JSON templates use — function calls, pipelines, parenthesised
//! sub-pipelines, string/raw-string/integer/bool literals, `.Field` build data, comments and
//! `{{-`/`-}}` trim markers. Control structures (`if`, `range`, `with`, `define`, `$x`) are
//! reported as unsupported instead of being half-interpreted.
//!
//! The parsed form can be printed back ([`Pipe::to_source`]) so that an action that must
//! wait for build data can be kept in the prepared config with its already-known parts
//! (user variables, `timestamp`, …) replaced by literals.

use std::fmt::Write as _;

use super::limits::MAX_NESTING;

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Node {
    Text(String),
    Action(Action),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Action {
    pub pipe: Pipe,
    /// Byte offset of the opening `{{` in the parsed text.
    pub offset: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Pipe {
    pub cmds: Vec<Cmd>,
}

/// One command of a pipeline: a function call with its arguments, or a single operand.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Cmd {
    pub args: Vec<Arg>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Arg {
    /// A function name (called with the following arguments, or with none when it is an argument).
    Ident(String),
    /// `.A.B`: build data.
    Field(Vec<String>),
    /// `.` alone.
    Dot,
    Str(String),
    Int(i64),
    Bool(bool),
    Sub(Pipe),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SyntaxError {
    pub offset: usize,
    pub message: String,
}

impl SyntaxError {
    fn at(offset: usize, message: impl Into<String>) -> SyntaxError {
        SyntaxError {
            offset,
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Field(Vec<String>),
    Dot,
    Str(String),
    Int(i64),
    Pipe,
    Open,
    Close,
}

/// Parses a string into literal text and actions.
pub(crate) fn parse(src: &str) -> Result<Vec<Node>, SyntaxError> {
    let mut nodes = Vec::new();
    let mut text = String::new();
    let mut pos = 0;
    while pos < src.len() {
        let Some(rel) = src[pos..].find("{{") else {
            text.push_str(&src[pos..]);
            break;
        };
        let open = pos + rel;
        text.push_str(&src[pos..open]);
        let mut inner = open + 2;
        let bytes = src.as_bytes();
        if bytes.get(inner) == Some(&b'-')
            && bytes
                .get(inner + 1)
                .is_some_and(|b| b.is_ascii_whitespace())
        {
            let kept = text.trim_end().len();
            text.truncate(kept);
            inner += 2;
        }
        let mut lx = Lexer { src, pos: inner };
        // Comments: `{{/* ... */}}`.
        lx.skip_space();
        if src[lx.pos..].starts_with("/*") {
            let Some(end) = src[lx.pos + 2..].find("*/") else {
                return Err(SyntaxError::at(open, "unclosed comment: add `*/}}`"));
            };
            lx.pos += 2 + end + 2;
            lx.skip_space();
            let (after, trims) = lx.close().ok_or_else(|| {
                SyntaxError::at(open, "comment ends with `*/` but is not followed by `}}`")
            })?;
            pos = if trims { skip_ws(src, after) } else { after };
            continue;
        }
        let mut toks = Vec::new();
        let (after, trims) = loop {
            lx.skip_space();
            if lx.pos >= src.len() {
                return Err(SyntaxError::at(
                    open,
                    "unclosed action: `{{` without a matching `}}`",
                ));
            }
            if let Some(r) = lx.close() {
                break r;
            }
            toks.push(lx.token()?);
        };
        let mut p = Parser {
            toks,
            i: 0,
            action_offset: open,
            depth: 0,
        };
        let pipe = p.pipe()?;
        if p.i < p.toks.len() {
            let what = match &p.toks[p.i].1 {
                Tok::Close => "unexpected `)`".to_string(),
                t => format!("unexpected {}", describe(t)),
            };
            return Err(SyntaxError::at(p.toks[p.i].0, what));
        }
        if !text.is_empty() {
            nodes.push(Node::Text(std::mem::take(&mut text)));
        }
        nodes.push(Node::Action(Action { pipe, offset: open }));
        pos = after;
        if trims {
            pos = skip_ws(src, pos);
        }
    }
    if !text.is_empty() {
        nodes.push(Node::Text(text));
    }
    Ok(nodes)
}

fn skip_ws(src: &str, mut pos: usize) -> usize {
    while let Some(c) = src[pos..].chars().next() {
        if !c.is_whitespace() {
            break;
        }
        pos += c.len_utf8();
    }
    pos
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::Ident(s) => format!("`{s}`"),
        Tok::Field(f) => format!("`.{}`", f.join(".")),
        Tok::Dot => "`.`".into(),
        Tok::Str(s) => format!("string {s:?}"),
        Tok::Int(i) => format!("number {i}"),
        Tok::Pipe => "`|`".into(),
        Tok::Open => "`(`".into(),
        Tok::Close => "`)`".into(),
    }
}

struct Lexer<'a> {
    src: &'a str,
    pos: usize,
}

impl Lexer<'_> {
    fn peek(&self) -> Option<char> {
        self.src[self.pos..].chars().next()
    }

    fn skip_space(&mut self) {
        self.pos = skip_ws(self.src, self.pos);
    }

    /// At `}}` or ` -}}`: returns the position after it and whether it trims what follows.
    fn close(&mut self) -> Option<(usize, bool)> {
        let rest = &self.src[self.pos..];
        if rest.starts_with("}}") {
            return Some((self.pos + 2, false));
        }
        if rest.starts_with("-}}")
            && self.pos > 0
            && self.src.as_bytes()[self.pos - 1].is_ascii_whitespace()
        {
            return Some((self.pos + 3, true));
        }
        None
    }

    fn token(&mut self) -> Result<(usize, Tok), SyntaxError> {
        let start = self.pos;
        let c = self.peek().expect("caller checked for end of input");
        let tok = match c {
            '|' => {
                self.pos += 1;
                Tok::Pipe
            }
            '(' => {
                self.pos += 1;
                Tok::Open
            }
            ')' => {
                self.pos += 1;
                Tok::Close
            }
            '"' => Tok::Str(self.quoted()?),
            '`' => {
                let Some(end) = self.src[start + 1..].find('`') else {
                    return Err(SyntaxError::at(start, "unterminated raw string: add the closing backtick"));
                };
                self.pos = start + 1 + end + 1;
                Tok::Str(self.src[start + 1..start + 1 + end].to_string())
            }
            '.' => {
                self.pos += 1;
                let mut parts = Vec::new();
                loop {
                    let name = self.ident_chars();
                    if name.is_empty() {
                        break;
                    }
                    parts.push(name);
                    if self.peek() == Some('.') && self.src[self.pos + 1..].starts_with(|c: char| c.is_alphabetic() || c == '_') {
                        self.pos += 1;
                    } else {
                        break;
                    }
                }
                if parts.is_empty() {
                    Tok::Dot
                } else {
                    Tok::Field(parts)
                }
            }
            '$' => return Err(SyntaxError::at(start, "template variables (`$x`) are not supported in Packer JSON templates; use {{user `name`}}")),
            '\'' => return Err(SyntaxError::at(start, "character constants are not supported; use a \"string\" or `raw string`")),
            c if c.is_ascii_digit() || (c == '-' && self.src[start + 1..].starts_with(|d: char| d.is_ascii_digit())) => {
                self.pos += 1;
                while self.peek().is_some_and(|d| d.is_ascii_alphanumeric() || d == '.' || d == '_') {
                    self.pos += 1;
                }
                let text = &self.src[start..self.pos];
                let n = text.parse::<i64>().map_err(|_| SyntaxError::at(start, format!("`{text}` is not a whole number")))?;
                Tok::Int(n)
            }
            c if c.is_alphabetic() || c == '_' => {
                let name = self.ident_chars();
                Tok::Ident(name)
            }
            c => return Err(SyntaxError::at(start, format!("unexpected character {c:?} in action"))),
        };
        Ok((start, tok))
    }

    fn ident_chars(&mut self) -> String {
        let start = self.pos;
        while self.peek().is_some_and(|c| c.is_alphanumeric() || c == '_') {
            self.pos += self.peek().map_or(1, char::len_utf8);
        }
        self.src[start..self.pos].to_string()
    }

    /// A Go interpreted string literal.
    fn quoted(&mut self) -> Result<String, SyntaxError> {
        let start = self.pos;
        self.pos += 1;
        let mut out = String::new();
        loop {
            let Some(c) = self.peek() else {
                return Err(SyntaxError::at(
                    start,
                    "unterminated string: add the closing `\"`",
                ));
            };
            self.pos += c.len_utf8();
            match c {
                '"' => return Ok(out),
                '\n' => {
                    return Err(SyntaxError::at(
                        start,
                        "newline in string: use `raw strings` for text over several lines",
                    ))
                }
                '\\' => {
                    let esc_at = self.pos - 1;
                    let Some(e) = self.peek() else {
                        return Err(SyntaxError::at(
                            start,
                            "unterminated string: add the closing `\"`",
                        ));
                    };
                    self.pos += e.len_utf8();
                    match e {
                        'n' => out.push('\n'),
                        't' => out.push('\t'),
                        'r' => out.push('\r'),
                        'a' => out.push('\u{7}'),
                        'b' => out.push('\u{8}'),
                        'f' => out.push('\u{c}'),
                        'v' => out.push('\u{b}'),
                        '\\' => out.push('\\'),
                        '"' => out.push('"'),
                        'x' | 'u' | 'U' => {
                            let n = match e {
                                'x' => 2,
                                'u' => 4,
                                _ => 8,
                            };
                            let digits = self.src.get(self.pos..self.pos + n).unwrap_or("");
                            let code = u32::from_str_radix(digits, 16)
                                .ok()
                                .filter(|_| digits.len() == n)
                                .and_then(char::from_u32)
                                .ok_or_else(|| {
                                    SyntaxError::at(
                                        esc_at,
                                        format!("invalid escape `\\{e}{digits}`"),
                                    )
                                })?;
                            self.pos += n;
                            out.push(code);
                        }
                        other => {
                            return Err(SyntaxError::at(
                                esc_at,
                                format!("unknown escape `\\{other}` in string"),
                            ))
                        }
                    }
                }
                c => out.push(c),
            }
        }
    }
}

const UNSUPPORTED_KEYWORDS: [&str; 10] = [
    "if", "else", "end", "range", "with", "define", "template", "block", "break", "continue",
];

struct Parser {
    toks: Vec<(usize, Tok)>,
    i: usize,
    action_offset: usize,
    /// How many `(` enclose the command being parsed (at most [`MAX_NESTING`]).
    depth: usize,
}

impl Parser {
    fn pipe(&mut self) -> Result<Pipe, SyntaxError> {
        let mut cmds = Vec::new();
        loop {
            let cmd = self.cmd()?;
            cmds.push(cmd);
            match self.toks.get(self.i) {
                Some((_, Tok::Pipe)) => self.i += 1,
                _ => break,
            }
        }
        Ok(Pipe { cmds })
    }

    fn cmd(&mut self) -> Result<Cmd, SyntaxError> {
        let mut args = Vec::new();
        while let Some((at, tok)) = self.toks.get(self.i).cloned() {
            let arg = match tok {
                Tok::Pipe | Tok::Close => break,
                Tok::Open => {
                    if self.depth >= MAX_NESTING {
                        return Err(SyntaxError::at(
                            at,
                            format!("parentheses nested more than {MAX_NESTING} deep (the limit): write the expression as a pipeline (`a | b`) or in steps through variables"),
                        ));
                    }
                    self.i += 1;
                    self.depth += 1;
                    let sub = self.pipe()?;
                    self.depth -= 1;
                    match self.toks.get(self.i) {
                        Some((_, Tok::Close)) => self.i += 1,
                        _ => return Err(SyntaxError::at(at, "unclosed `(`: add the matching `)`")),
                    }
                    Arg::Sub(sub)
                }
                Tok::Ident(name) => {
                    self.i += 1;
                    match name.as_str() {
                        "true" => Arg::Bool(true),
                        "false" => Arg::Bool(false),
                        "nil" => return Err(SyntaxError::at(at, "`nil` is not a value a template can use")),
                        k if UNSUPPORTED_KEYWORDS.contains(&k) => {
                            return Err(SyntaxError::at(
                                at,
                                format!("`{k}` is not supported: amiflow evaluates Packer's template functions and pipelines, not control structures"),
                            ))
                        }
                        _ => Arg::Ident(name),
                    }
                }
                Tok::Field(f) => {
                    self.i += 1;
                    Arg::Field(f)
                }
                Tok::Dot => {
                    self.i += 1;
                    Arg::Dot
                }
                Tok::Str(s) => {
                    self.i += 1;
                    Arg::Str(s)
                }
                Tok::Int(n) => {
                    self.i += 1;
                    Arg::Int(n)
                }
            };
            args.push(arg);
        }
        if args.is_empty() {
            let at = self.toks.get(self.i).map_or(self.action_offset, |t| t.0);
            return Err(SyntaxError::at(at, "missing value for command"));
        }
        if args.len() > 1 && !matches!(args[0], Arg::Ident(_)) {
            return Err(SyntaxError::at(
                self.action_offset,
                "only a function can take arguments",
            ));
        }
        Ok(Cmd { args })
    }
}

/// The variables a text reads with `{{user `name`}}` (literal names only).
pub(crate) fn user_refs(src: &str) -> Vec<String> {
    fn pipe(p: &Pipe, out: &mut Vec<String>) {
        for c in &p.cmds {
            if let [Arg::Ident(f), Arg::Str(name), ..] = c.args.as_slice() {
                if f == "user" {
                    out.push(name.clone());
                }
            }
            for a in &c.args {
                if let Arg::Sub(sub) = a {
                    pipe(sub, out);
                }
            }
        }
    }
    let mut out = Vec::new();
    for node in parse(src).unwrap_or_default() {
        if let Node::Action(a) = node {
            pipe(&a.pipe, &mut out);
        }
    }
    out
}

/// Go-style quoting, readable back by [`parse`].
pub(crate) fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl Pipe {
    pub fn to_source(&self) -> String {
        self.cmds
            .iter()
            .map(Cmd::to_source)
            .collect::<Vec<_>>()
            .join(" | ")
    }
}

impl Cmd {
    pub fn to_source(&self) -> String {
        self.args
            .iter()
            .map(Arg::to_source)
            .collect::<Vec<_>>()
            .join(" ")
    }
}

impl Arg {
    pub fn to_source(&self) -> String {
        match self {
            Arg::Ident(s) => s.clone(),
            Arg::Field(f) => format!(".{}", f.join(".")),
            Arg::Dot => ".".into(),
            Arg::Str(s) => quote(s),
            Arg::Int(n) => n.to_string(),
            Arg::Bool(b) => b.to_string(),
            Arg::Sub(p) => format!("({})", p.to_source()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_action(src: &str) -> Pipe {
        match parse(src).unwrap().as_slice() {
            [Node::Action(a)] => a.pipe.clone(),
            other => panic!("expected one action, got {other:?}"),
        }
    }

    #[test]
    fn text_and_actions() {
        let nodes = parse("a {{timestamp}} b").unwrap();
        assert_eq!(nodes.len(), 3);
        assert_eq!(nodes[0], Node::Text("a ".into()));
        assert_eq!(nodes[2], Node::Text(" b".into()));
    }

    #[test]
    fn raw_and_quoted_strings() {
        let p = one_action("{{ user `a b` }}");
        assert_eq!(
            p.cmds[0].args,
            vec![Arg::Ident("user".into()), Arg::Str("a b".into())]
        );
        let p = one_action(r#"{{ replace "\"}}\n" "x" -1 "y" }}"#);
        assert_eq!(p.cmds[0].args[1], Arg::Str("\"}}\n".into()));
        assert_eq!(p.cmds[0].args[3], Arg::Int(-1));
    }

    #[test]
    fn pipelines_fields_and_subpipes() {
        let p = one_action("{{ .SourceAMITags.Name | clean_resource_name }}");
        assert_eq!(p.cmds.len(), 2);
        assert_eq!(
            p.cmds[0].args,
            vec![Arg::Field(vec!["SourceAMITags".into(), "Name".into()])]
        );
        let p = one_action("{{ upper (user `x`) }}");
        assert!(matches!(p.cmds[0].args[1], Arg::Sub(_)));
        assert_eq!(p.to_source(), "upper (user \"x\")");
    }

    #[test]
    fn trim_markers_and_comments() {
        let nodes = parse("a  {{- timestamp -}}  b{{/* note */}}c").unwrap();
        assert_eq!(nodes[0], Node::Text("a".into()));
        assert_eq!(nodes[2], Node::Text("bc".into()));
    }

    #[test]
    fn errors_have_offsets() {
        let e = parse("abc {{ user `x }}").unwrap_err();
        assert_eq!(e.offset, 12);
        assert!(e.message.contains("raw string"));
        let e = parse("ab {{ timestamp").unwrap_err();
        assert_eq!(e.offset, 3);
        assert!(parse("{{ if .X }}y{{ end }}")
            .unwrap_err()
            .message
            .contains("not supported"));
        assert!(parse("{{ }}")
            .unwrap_err()
            .message
            .contains("missing value"));
        assert!(parse("{{ $x }}").is_err());
        assert!(parse("{{ (upper `a` }}")
            .unwrap_err()
            .message
            .contains("unclosed"));
        assert!(parse("{{ upper `a`) }}").unwrap_err().message.contains(")"));
    }

    #[test]
    fn quote_round_trips() {
        for s in [
            "plain",
            "q\"uote",
            "back\\slash",
            "new\nline\t\u{1}",
            "{{ }}",
            "üñí",
        ] {
            let p = one_action(&format!("{{{{ {} }}}}", quote(s)));
            assert_eq!(p.cmds[0].args, vec![Arg::Str(s.into())]);
        }
    }
}
