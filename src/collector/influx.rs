//! InfluxDB line protocol, several lines per datagram:
//! `measurement[,tag=value...] field=value[,field=value...] [timestamp]`.
//!
//! As InfluxDB and Telegraf read it: a backslash escapes `,` and ` ` in the measurement, and
//! `,`, `=` and ` ` in tag keys, tag values and field keys (before any other character it is
//! kept as is); string fields are double-quoted with `\"` and `\\` escaped; `1i` is an integer,
//! `1u` an unsigned one, `t`/`true`/`F`/`FALSE`... booleans, anything else a float (NaN and
//! infinities refused); the timestamp is optional (integer nanoseconds). `#` comments and empty
//! lines are skipped; a line without fields, or with an empty tag value, is malformed.

use super::text::{lines, Tags};

#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    Float(f64),
    Int(i64),
    UInt(u64),
    Bool(bool),
    Str(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct InfluxPoint {
    pub measurement: String,
    pub tags: Tags,
    pub fields: Vec<(String, FieldValue)>,
    pub timestamp: Option<i64>,
}

/// Parses every line of `datagram` into `out`; returns how many lines were malformed.
pub fn parse(datagram: &[u8], out: &mut Vec<InfluxPoint>) -> u64 {
    let mut errors = 0;
    for line in lines(datagram) {
        let parsed = std::str::from_utf8(line).map_err(|_| "not UTF-8").and_then(parse_line);
        match parsed {
            Ok(Some(point)) => out.push(point),
            Ok(None) => {}
            Err(_) => errors += 1,
        }
    }
    errors
}

/// One line: `Ok(None)` for a comment or a blank line.
pub fn parse_line(line: &str) -> Result<Option<InfluxPoint>, &'static str> {
    let line = line.trim_start_matches([' ', '\t']);
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let mut cursor = Cursor { rest: line };
    let (measurement, end) = cursor.token(&[',', ' '], &[',', ' ']);
    if measurement.is_empty() {
        return Err("empty measurement");
    }
    let mut tags = Tags::new();
    let mut end = end;
    while end == Some(',') {
        let (key, sep) = cursor.token(&['=', ',', ' '], &[',', '=', ' ']);
        if sep != Some('=') || key.is_empty() {
            return Err("tag without '='");
        }
        let (value, sep) = cursor.token(&[',', ' ', '='], &[',', '=', ' ']);
        if value.is_empty() || sep == Some('=') {
            return Err("empty or bad tag value");
        }
        tags.insert(&key, &value);
        end = sep;
    }
    if end != Some(' ') {
        return Err("no fields");
    }
    cursor.skip_spaces();
    let mut fields = Vec::new();
    loop {
        let (key, sep) = cursor.token(&['=', ',', ' '], &[',', '=', ' ']);
        if sep != Some('=') || key.is_empty() {
            return Err("field without '='");
        }
        let (value, sep) = cursor.field_value()?;
        fields.push((key, value));
        match sep {
            Some(',') => continue,
            _ => break,
        }
    }
    cursor.skip_spaces();
    let timestamp = match cursor.rest.trim_end() {
        "" => None,
        stamp => Some(stamp.parse::<i64>().map_err(|_| "bad timestamp")?),
    };
    Ok(Some(InfluxPoint { measurement, tags, fields, timestamp }))
}

struct Cursor<'a> {
    rest: &'a str,
}

impl Cursor<'_> {
    /// Text up to the first unescaped character of `stops` (consumed and returned), with the
    /// backslash escapes of `escapable` undone.
    fn token(&mut self, stops: &[char], escapable: &[char]) -> (String, Option<char>) {
        let mut text = String::new();
        let mut chars = self.rest.char_indices();
        while let Some((i, c)) = chars.next() {
            if c == '\\' {
                match self.rest[i + 1..].chars().next() {
                    Some(next) if escapable.contains(&next) => {
                        text.push(next);
                        chars.next();
                    }
                    _ => text.push('\\'),
                }
            } else if stops.contains(&c) {
                self.rest = &self.rest[i + 1..];
                return (text, Some(c));
            } else {
                text.push(c);
            }
        }
        self.rest = "";
        (text, None)
    }

    fn skip_spaces(&mut self) {
        self.rest = self.rest.trim_start_matches(' ');
    }

    fn field_value(&mut self) -> Result<(FieldValue, Option<char>), &'static str> {
        if let Some(quoted) = self.rest.strip_prefix('"') {
            let mut text = String::new();
            let mut chars = quoted.char_indices();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' if matches!(quoted[i + 1..].chars().next(), Some('"' | '\\')) => {
                        text.push(chars.next().map_or('\\', |(_, c)| c));
                    }
                    '"' => {
                        let after = &quoted[i + 1..];
                        let sep = after.chars().next();
                        if !matches!(sep, None | Some(',' | ' ')) {
                            return Err("text after a string field");
                        }
                        self.rest = if sep.is_some() { &after[1..] } else { after };
                        return Ok((FieldValue::Str(text), sep));
                    }
                    c => text.push(c),
                }
            }
            return Err("unterminated string field");
        }
        let end = self.rest.find([',', ' ']).unwrap_or(self.rest.len());
        let raw = &self.rest[..end];
        let sep = self.rest[end..].chars().next();
        self.rest = if sep.is_some() { &self.rest[end + 1..] } else { "" };
        let value = match raw {
            "" => return Err("empty field value"),
            "t" | "T" | "true" | "True" | "TRUE" => FieldValue::Bool(true),
            "f" | "F" | "false" | "False" | "FALSE" => FieldValue::Bool(false),
            _ if raw.ends_with('i') => FieldValue::Int(raw[..raw.len() - 1].parse().map_err(|_| "bad integer")?),
            _ if raw.ends_with('u') => FieldValue::UInt(raw[..raw.len() - 1].parse().map_err(|_| "bad unsigned")?),
            _ => {
                let is_number = raw.bytes().all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b));
                match raw.parse::<f64>() {
                    Ok(v) if is_number && v.is_finite() => FieldValue::Float(v),
                    _ => return Err("bad float"),
                }
            }
        };
        Ok((value, sep))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(line: &str) -> InfluxPoint {
        parse_line(line).unwrap_or_else(|e| panic!("{line:?}: {e}")).expect("a point")
    }

    fn tags(pairs: &[(&str, &str)]) -> Tags {
        Tags::from(pairs)
    }

    #[test]
    fn the_documented_examples() {
        let p = point("weather,location=us-midwest temperature=82 1465839830100400200");
        assert_eq!(p.measurement, "weather");
        assert_eq!(p.tags, tags(&[("location", "us-midwest")]));
        assert_eq!(p.fields, vec![("temperature".into(), FieldValue::Float(82.0))]);
        assert_eq!(p.timestamp, Some(1465839830100400200));
        let p = point("cpu,host=a,region=eu usage=1.5,count=3i,big=18446744073709551615u,ok=t,name=\"x y\"");
        assert_eq!(p.timestamp, None);
        assert_eq!(
            p.fields.iter().map(|(_, v)| v.clone()).collect::<Vec<_>>(),
            vec![
                FieldValue::Float(1.5),
                FieldValue::Int(3),
                FieldValue::UInt(u64::MAX),
                FieldValue::Bool(true),
                FieldValue::Str("x y".into())
            ]
        );
        assert_eq!(point("m v=-1e3 -5").timestamp, Some(-5));
        assert_eq!(point("m v=FALSE").fields[0].1, FieldValue::Bool(false));
    }

    #[test]
    fn escapes() {
        let p = point(r#"my\ measure\,ment,tag\ key=tag\,val\=ue field\=key="say \"hi\" \\o/",f2=1"#);
        assert_eq!(p.measurement, "my measure,ment");
        assert_eq!(p.tags, tags(&[("tag key", "tag,val=ue")]));
        assert_eq!(p.fields[0], ("field=key".into(), FieldValue::Str(r#"say "hi" \o/"#.into())));
        assert_eq!(p.fields[1].0, "f2");
        // A backslash before anything else stays; commas and spaces inside strings are text.
        assert_eq!(point(r"m\x v=1").measurement, r"m\x");
        assert_eq!(point(r#"m s="a,b c=d""#).fields[0].1, FieldValue::Str("a,b c=d".into()));
        assert_eq!(point("m,a=1,a=2 v=1").tags, tags(&[("a", "2")]));
    }

    #[test]
    fn comments_blanks_and_malformed_lines() {
        assert_eq!(parse_line("# a comment").unwrap(), None);
        assert_eq!(parse_line("   ").unwrap(), None);
        for bad in [
            "m",
            "m,tag=x",
            "m v",
            "m v=",
            "m,t= v=1",
            "m,t v=1",
            ",t=1 v=1",
            "m v=1 notatime",
            "m v=abc",
            "m v=NaN",
            "m v=inf",
            "m v=1.5i",
            r#"m v="unterminated"#,
            r#"m v="x"y"#,
            "m =1",
        ] {
            assert!(parse_line(bad).is_err(), "{bad:?} parsed as {:?}", parse_line(bad));
        }
        let mut out = Vec::new();
        assert_eq!(parse(b"a v=1\n\nb v=2 3\r\nbroken\n# c\n", &mut out), 1);
        assert_eq!(out.len(), 2);
    }
}
