//! One flat JSON object, written by hand (no dependencies).

pub struct Json {
    parts: Vec<String>,
}

impl Json {
    pub fn new() -> Json {
        Json { parts: Vec::new() }
    }

    fn key(k: &str) -> String {
        let mut s = String::new();
        escape(k, &mut s);
        s
    }

    pub fn str(&mut self, k: &str, v: &str) {
        let mut s = String::new();
        escape(v, &mut s);
        self.parts.push(format!("{}:{}", Json::key(k), s));
    }

    pub fn int(&mut self, k: &str, v: i64) {
        self.parts.push(format!("{}:{}", Json::key(k), v));
    }

    pub fn num(&mut self, k: &str, v: f64) {
        let text = if v.is_finite() { format!("{v:.3}") } else { "null".to_owned() };
        self.parts.push(format!("{}:{}", Json::key(k), text));
    }

    pub fn finish(&self) -> String {
        format!("{{{}}}", self.parts.join(","))
    }
}

fn escape(v: &str, out: &mut String) {
    out.push('"');
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}
