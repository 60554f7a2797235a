//! StatsD lines with the DogStatsD extensions, several lines per datagram:
//! `name:value[:value...]|type[|@rate][|#tag:value,tag][|...]`.
//!
//! Edge cases follow gostatsd's lexer and Telegraf's statsd input: the sections after the type
//! come in any order and unknown ones (`|c:container`, `|T123`) are skipped; tags are split at
//! their first `:` (so `#url:http://x` keeps its colons in the value), a tag without `:` has an
//! empty value, empty tags (`#a,,b`) are skipped; packed values (`1:2:3|ms`) give one metric
//! each; a gauge written with a sign (`+4`, `-4`) is a change (type `g+`); set values stay
//! text; NaN, infinities, unknown types, a rate outside (0, 1] and empty names are errors, as
//! are DogStatsD events and service checks (`_e{`, `_sc|`), which are not metrics.

use super::text::{lines, Tags};

/// The value of a statsd metric: a number, or the member of a set.
#[derive(Debug, Clone, PartialEq)]
pub enum StatsdValue {
    Number(f64),
    Text(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct StatsdMetric {
    pub name: String,
    pub value: StatsdValue,
    /// `c`, `g`, `g+` (a signed gauge: a change), `ms`, `h`, `d` or `s`.
    pub kind: &'static str,
    pub sample_rate: f64,
    pub tags: Tags,
}

/// Parses every line of `datagram` into `out`; returns how many lines were malformed.
pub fn parse(datagram: &[u8], out: &mut Vec<StatsdMetric>) -> u64 {
    let mut errors = 0;
    for line in lines(datagram) {
        match std::str::from_utf8(line) {
            Ok(text) => {
                if parse_line(text, out).is_err() {
                    errors += 1;
                }
            }
            Err(_) => errors += 1,
        }
    }
    errors
}

/// Parses one line; nothing is pushed when it is malformed.
pub fn parse_line(line: &str, out: &mut Vec<StatsdMetric>) -> Result<(), &'static str> {
    if line.starts_with("_e{") || line.starts_with("_sc|") {
        return Err("events and service checks are not metrics");
    }
    let (name, rest) = line.split_once(':').ok_or("no ':' after the name")?;
    if name.is_empty() {
        return Err("empty name");
    }
    if name.contains('|') {
        return Err("'|' in the name");
    }
    let mut sections = rest.split('|');
    let values = sections.next().unwrap_or("");
    let kind = match sections.next().ok_or("no '|type'")? {
        "c" => "c",
        "g" => "g",
        "ms" => "ms",
        "h" => "h",
        "d" => "d",
        "s" => "s",
        _ => return Err("unknown type"),
    };
    let mut sample_rate = 1.0;
    let mut tags = Tags::new();
    for section in sections {
        if let Some(rate) = section.strip_prefix('@') {
            sample_rate = rate.parse::<f64>().map_err(|_| "bad sample rate")?;
            if !(sample_rate > 0.0 && sample_rate <= 1.0) {
                return Err("sample rate outside (0, 1]");
            }
        } else if let Some(list) = section.strip_prefix('#') {
            for tag in list.split(',').filter(|t| !t.is_empty()) {
                let (key, value) = tag.split_once(':').unwrap_or((tag, ""));
                tags.insert(key, value);
            }
        }
    }
    let first = out.len();
    for value in values.split(':').filter(|v| !v.is_empty()) {
        let (value, kind) = if kind == "s" {
            (StatsdValue::Text(value.to_owned()), kind)
        } else {
            let number = value.parse::<f64>().map_err(|_| "value is not a number");
            let number = match number {
                Ok(n) if n.is_finite() => n,
                _ => {
                    out.truncate(first);
                    return Err("value is not a finite number");
                }
            };
            let signed = kind == "g" && (value.starts_with('+') || value.starts_with('-'));
            (StatsdValue::Number(number), if signed { "g+" } else { kind })
        };
        out.push(StatsdMetric { name: name.to_owned(), value, kind, sample_rate, tags: tags.clone() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(line: &str) -> StatsdMetric {
        let mut out = Vec::new();
        parse_line(line, &mut out).unwrap_or_else(|e| panic!("{line:?}: {e}"));
        assert_eq!(out.len(), 1, "{line:?}");
        out.pop().unwrap()
    }

    fn tags(pairs: &[(&str, &str)]) -> Tags {
        Tags::from(pairs)
    }

    #[test]
    fn types_rates_and_tags() {
        let m = one("smp.rte:5|c|@0.1|#foo:bar,baz");
        assert_eq!((m.name.as_str(), m.kind, m.sample_rate), ("smp.rte", "c", 0.1));
        assert_eq!(m.value, StatsdValue::Number(5.0));
        assert_eq!(m.tags, tags(&[("foo", "bar"), ("baz", "")]));
        assert_eq!(one("def.g:10|ms").kind, "ms");
        assert_eq!(one("def.h:10|h").kind, "h");
        assert_eq!(one("lat:2.5|d|#a:b").kind, "d");
        assert_eq!(one("uniq.usr:joe|s").value, StatsdValue::Text("joe".into()));
        assert_eq!(one("g:+4|g").kind, "g+");
        assert_eq!(one("g:-4|g").value, StatsdValue::Number(-4.0));
        assert_eq!(one("g:4|g").kind, "g");
    }

    #[test]
    fn tag_edge_cases() {
        assert_eq!(one("a:1|g|#url:http://x:80/y").tags, tags(&[("url", "http://x:80/y")]));
        assert_eq!(one("a:1|g|#f,,z").tags, tags(&[("f", ""), ("z", "")]));
        assert_eq!(one("a:1|g|#").tags, Tags::new());
        assert_eq!(one("a:1|g|#env:").tags, tags(&[("env", "")]));
        assert_eq!(one("a:1|c|c:xyz|#foo:bar|@0.5").sample_rate, 0.5);
        assert_eq!(one("a:1|c|T1656581400|#k:v").tags, tags(&[("k", "v")]));
    }

    #[test]
    fn packed_values_give_one_metric_each() {
        let mut out = Vec::new();
        parse_line("a.packing:1:2:|ms|#k:v", &mut out).unwrap();
        assert_eq!(out.iter().map(|m| m.value.clone()).collect::<Vec<_>>(), [1.0, 2.0].map(StatsdValue::Number));
        out.clear();
        parse_line("a.packing:|ms", &mut out).unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn malformed_lines() {
        for bad in [
            "fOO|bar:bazkk",
            "foo.bar.baz:1|q",
            "NaN.should.be:NaN|g",
            "inf:inf|g",
            "bad.sampling:1|g|@",
            "bad.sampling:1|g|@2",
            "nocolon",
            ":1|c",
            "no.type:1",
            "x:1:abc|c",
            "_e{1,1}:a|b",
            "_sc|check|0",
        ] {
            let mut out = Vec::new();
            assert!(parse_line(bad, &mut out).is_err(), "{bad:?} parsed");
            assert!(out.is_empty(), "{bad:?} left metrics");
        }
    }

    #[test]
    fn several_lines_per_datagram() {
        let mut out = Vec::new();
        let errors = parse(b"a:1|c\nb:2|g\r\n\nbroken\nc:3|ms|#x:y\n", &mut out);
        assert_eq!(errors, 1);
        assert_eq!(out.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(), ["a", "b", "c"]);
        assert_eq!(parse(b"\xff\xfe:1|c", &mut out), 1);
    }
}
