//! What the statsd and influx parsers share: lines of a datagram and tag sets.

/// The lines of a datagram: split at `\n`, a trailing `\r` removed, empty lines skipped.
pub fn lines(datagram: &[u8]) -> impl Iterator<Item = &[u8]> {
    datagram.split(|&b| b == b'\n').map(|line| line.strip_suffix(b"\r").unwrap_or(line)).filter(|l| !l.is_empty())
}

/// Tags in the order they came, a repeated key keeping its last value.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tags(pub Vec<(String, String)>);

impl Tags {
    pub fn new() -> Tags {
        Tags(Vec::new())
    }

    pub fn insert(&mut self, key: &str, value: &str) {
        match self.0.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = value.to_owned(),
            None => self.0.push((key.to_owned(), value.to_owned())),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<&[(&str, &str)]> for Tags {
    fn from(pairs: &[(&str, &str)]) -> Tags {
        let mut tags = Tags::new();
        for (key, value) in pairs {
            tags.insert(key, value);
        }
        tags
    }
}
