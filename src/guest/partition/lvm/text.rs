//! A bounded parser of lvm2's metadata text (the grammar of lvm2's `libdm/libdm-config.c`):
//!
//! ```text
//! file    := item*
//! item    := name '=' value | name '{' item* '}'
//! value   := scalar | '[' (scalar (',' scalar)*)? ','? ']'
//! scalar  := "string" | 'string' | integer | float
//! ```
//!
//! `#` starts a comment to the end of the line; a backslash in a string takes the next byte
//! literally; names are runs of bytes other than white space and `#{}[]=",'`. Limits:
//! sections nest at most [`MAX_DEPTH`] deep, a text has at most [`MAX_NODES`] items and array
//! elements, integers fit in an `i64`. Each breach is its own [`CorruptKind`]; nothing here
//! recurses deeper than [`MAX_DEPTH`] or loops without consuming input.

use super::super::super::{CorruptKind, GuestError};

/// lvm2's own metadata nests five deep (file, VG, `logical_volumes`, LV, segment).
pub const MAX_DEPTH: usize = 8;
/// Items and array elements of one text: a VG of ten thousand LVs has about 200,000.
pub const MAX_NODES: usize = 400_000;

/// A value of the metadata text.
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    Int(i64),
    /// A string with its escapes removed.
    Str(Vec<u8>),
    /// A number with a fraction: kept only so that the grammar is complete (no field lvm2
    /// writes into VG metadata is one).
    Float,
    Array(Vec<Value<'a>>),
    Section(Section<'a>),
}

/// A section's items, in text order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Section<'a> {
    pub items: Vec<(&'a [u8], Value<'a>)>,
}

impl<'a> Section<'a> {
    /// The first item named `name`.
    pub fn get(&self, name: &str) -> Option<&Value<'a>> {
        self.items
            .iter()
            .find(|(n, _)| *n == name.as_bytes())
            .map(|(_, v)| v)
    }

    pub fn int(&self, name: &str) -> Option<i64> {
        match self.get(name)? {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    pub fn str(&self, name: &str) -> Option<&[u8]> {
        match self.get(name)? {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn section(&self, name: &str) -> Option<&Section<'a>> {
        match self.get(name)? {
            Value::Section(s) => Some(s),
            _ => None,
        }
    }

    /// The subsections, with their names.
    pub fn sections(&self) -> impl Iterator<Item = (&'a [u8], &Section<'a>)> {
        self.items.iter().filter_map(|(n, v)| match v {
            Value::Section(s) => Some((*n, s)),
            _ => None,
        })
    }

    /// Whether the array `name` holds the string `flag` (`status = ["READ", "VISIBLE"]`).
    pub fn has_flag(&self, name: &str, flag: &str) -> bool {
        match self.get(name) {
            Some(Value::Array(a)) => a
                .iter()
                .any(|v| matches!(v, Value::Str(s) if s == flag.as_bytes())),
            _ => false,
        }
    }
}

struct Parser<'a> {
    text: &'a [u8],
    at: usize,
    nodes: usize,
}

fn is_name_byte(b: u8) -> bool {
    !b.is_ascii_whitespace() && !b"#{}[]=\",'".contains(&b)
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.get(self.at).copied()
    }

    fn skip_blanks(&mut self) {
        while let Some(b) = self.peek() {
            if b.is_ascii_whitespace() {
                self.at += 1;
            } else if b == b'#' {
                while let Some(c) = self.peek() {
                    self.at += 1;
                    if c == b'\n' {
                        break;
                    }
                }
            } else {
                break;
            }
        }
    }

    fn count(&mut self) -> Result<(), GuestError> {
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            return Err(CorruptKind::LvmTextTooLarge.into());
        }
        Ok(())
    }

    fn name(&mut self) -> Result<&'a [u8], GuestError> {
        self.skip_blanks();
        let start = self.at;
        while self.peek().is_some_and(is_name_byte) {
            self.at += 1;
        }
        if self.at == start {
            return Err(CorruptKind::LvmTextSyntax.into());
        }
        Ok(&self.text[start..self.at])
    }

    /// Items up to `}` (or the end of the text at depth 0).
    fn items(&mut self, depth: usize) -> Result<Section<'a>, GuestError> {
        let mut section = Section::default();
        loop {
            self.skip_blanks();
            match self.peek() {
                None if depth == 0 => return Ok(section),
                None => return Err(CorruptKind::LvmTextSyntax.into()),
                Some(b'}') if depth > 0 => {
                    self.at += 1;
                    return Ok(section);
                }
                Some(_) => {}
            }
            let name = self.name()?;
            self.count()?;
            self.skip_blanks();
            match self.peek() {
                Some(b'{') => {
                    self.at += 1;
                    if depth + 1 >= MAX_DEPTH {
                        return Err(CorruptKind::LvmTextDepth.into());
                    }
                    let inner = self.items(depth + 1)?;
                    section.items.push((name, Value::Section(inner)));
                }
                Some(b'=') => {
                    self.at += 1;
                    let value = self.value()?;
                    section.items.push((name, value));
                }
                _ => return Err(CorruptKind::LvmTextSyntax.into()),
            }
        }
    }

    fn value(&mut self) -> Result<Value<'a>, GuestError> {
        self.skip_blanks();
        if self.peek() != Some(b'[') {
            return self.scalar();
        }
        self.at += 1;
        let mut items = Vec::new();
        loop {
            self.skip_blanks();
            if self.peek() == Some(b']') {
                self.at += 1;
                return Ok(Value::Array(items));
            }
            self.count()?;
            items.push(self.scalar()?);
            self.skip_blanks();
            match self.peek() {
                Some(b',') => self.at += 1,
                Some(b']') => {}
                _ => return Err(CorruptKind::LvmTextSyntax.into()),
            }
        }
    }

    fn scalar(&mut self) -> Result<Value<'a>, GuestError> {
        self.skip_blanks();
        match self.peek() {
            Some(q @ (b'"' | b'\'')) => {
                self.at += 1;
                let mut s = Vec::new();
                loop {
                    match self.peek() {
                        None => return Err(CorruptKind::LvmTextString.into()),
                        Some(b'\\') => {
                            self.at += 1;
                            let c = self.peek().ok_or(CorruptKind::LvmTextString)?;
                            s.push(c);
                            self.at += 1;
                        }
                        Some(c) if c == q => {
                            self.at += 1;
                            return Ok(Value::Str(s));
                        }
                        Some(c) => {
                            s.push(c);
                            self.at += 1;
                        }
                    }
                }
            }
            Some(b'-' | b'0'..=b'9') => {
                let start = self.at;
                self.at += 1;
                while self.peek().is_some_and(|b| b.is_ascii_digit() || b == b'.') {
                    self.at += 1;
                }
                let token = &self.text[start..self.at];
                if token.contains(&b'.') {
                    return Ok(Value::Float);
                }
                std::str::from_utf8(token)
                    .ok()
                    .and_then(|t| t.parse::<i64>().ok())
                    .map(Value::Int)
                    .ok_or_else(|| CorruptKind::LvmTextNumber.into())
            }
            _ => Err(CorruptKind::LvmTextSyntax.into()),
        }
    }
}

/// Parses a whole metadata text into its top-level section.
pub fn parse(text: &[u8]) -> Result<Section<'_>, GuestError> {
    let mut p = Parser {
        text,
        at: 0,
        nodes: 0,
    };
    p.items(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &[u8]) -> CorruptKind {
        match parse(text) {
            Err(GuestError::Corrupt(k)) => k,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn lvm2s_own_text_parses() {
        let text = b"vg-1 {\n\tid = \"abc\"\n\tseqno = 7 # a comment\n\tstatus = [\"READ\", \"WRITE\"]\n\tlogical_volumes {\n\t\tlv {\n\t\t\tstripes = [\n\t\t\t\t\"pv0\", 0\n\t\t\t]\n\t\t}\n\t}\n}\n# trailer\ncontents = \"Text Format Volume Group\"\nversion = 1\nf = 1.5\ne = []\nq = 'a\\'b'\n";
        let root = parse(text).unwrap();
        let vg = root.section("vg-1").unwrap();
        assert_eq!(vg.str("id"), Some(&b"abc"[..]));
        assert_eq!(vg.int("seqno"), Some(7));
        assert!(vg.has_flag("status", "WRITE"));
        let lv = vg
            .section("logical_volumes")
            .unwrap()
            .section("lv")
            .unwrap();
        assert_eq!(
            lv.get("stripes"),
            Some(&Value::Array(vec![
                Value::Str(b"pv0".to_vec()),
                Value::Int(0)
            ]))
        );
        assert_eq!(root.int("version"), Some(1));
        assert_eq!(root.get("f"), Some(&Value::Float));
        assert_eq!(root.str("q"), Some(&b"a'b"[..]));
    }

    #[test]
    fn each_breach_has_its_error() {
        assert_eq!(err(&b"a {".repeat(100_000)), CorruptKind::LvmTextDepth);
        assert_eq!(err(b"a { b = 1"), CorruptKind::LvmTextSyntax);
        assert_eq!(err(b"a = \"unterminated"), CorruptKind::LvmTextString);
        assert_eq!(err(b"a = 99999999999999999999"), CorruptKind::LvmTextNumber);
        assert_eq!(err(b"a = [[1]]"), CorruptKind::LvmTextSyntax);
        assert_eq!(err(b"a b"), CorruptKind::LvmTextSyntax);
        assert_eq!(err(b"}"), CorruptKind::LvmTextSyntax);
        assert_eq!(
            err(&b"a=1\n".repeat(MAX_NODES + 1)),
            CorruptKind::LvmTextTooLarge
        );
        // Within the limits: MAX_DEPTH - 1 nested sections.
        let ok = [b"a {".repeat(MAX_DEPTH - 1), b"}".repeat(MAX_DEPTH - 1)].concat();
        assert!(parse(&ok).is_ok());
    }
}
