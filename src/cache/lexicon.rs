//! The word lists the guards and the verifier share, and their string
//! helpers: a leaf of the cache.
//!
//! Owns the groups of words that name the same thing (units and currencies,
//! polarity words, programming languages and platforms, natural languages),
//! the words that carry no content, the endings a word form may carry, and
//! the one-edit test of two words. It must never hold a rule: what a
//! difference means is the guards' and the verifier's to say.

/// Words that carry no direction or content of their own, skipped when word
/// orders are compared.
pub(crate) const FUNCTION_WORDS: &[&str] = &[
    "a", "an", "the", "my", "your", "our", "their", "his", "her", "its", "this", "that", "of",
    "in", "on", "at", "for", "with", "by", "and", "or", "is", "are", "do", "does", "how", "i",
    "what", "please", "can", "me", "it",
];

/// The words whose place follows a sentence's form, not what it asks:
/// articles, possessives, pronouns, the auxiliaries a question is built with
/// ("Is a tomato…" / "The tomato is…"), and "what" and "which". The order
/// guard does not compare where they sit.
pub(crate) const ORDER_SKIPS: &[&str] = &[
    "a", "an", "the", "my", "your", "our", "their", "his", "her", "its", "this", "that", "these",
    "those", "is", "are", "was", "were", "do", "does", "did", "i", "you", "we", "it", "me",
    "please", "can", "could", "should", "would", "will", "what", "which",
];

/// The name of the unit, language or programming-language group a single
/// Latin word belongs to, in any of its forms (`km`, `kilometers` →
/// `kilometer`; `js` → `javascript`): the verifier compares names, not
/// spellings.
pub fn group_name(word: &str) -> Option<&'static str> {
    static MAP: std::sync::OnceLock<std::collections::HashMap<&'static str, &'static str>> =
        std::sync::OnceLock::new();
    let map = MAP.get_or_init(|| {
        let mut m = std::collections::HashMap::new();
        for g in UNITS.iter().chain(CODE).chain(LANGUAGES) {
            for w in g
                .iter()
                .filter(|w| w.chars().all(|c| c.is_ascii_alphanumeric()))
            {
                m.entry(*w).or_insert(g[0]);
            }
        }
        m
    });
    if let Some(c) = map.get(word) {
        return Some(c);
    }
    SUFFIXES.iter().filter(|s| !s.is_empty()).find_map(|s| {
        let base = word.strip_suffix(s)?;
        map.get(base)
            .or_else(|| map.get(format!("{base}e").as_str()))
            .copied()
    })
}

/// WordNet's direct antonyms (adjectives, verbs and adverbs) and the forms
/// of their words, as `scripts/wordnet-antonyms.py` wrote them.
const ANTONYMS: &str = include_str!("../../assets/lexicon/antonyms.txt");

/// Pairs of opposite words ("good" / "bad", "rise" / "set"), looked up by
/// lemma.
pub(crate) struct Antonyms {
    opposite: std::collections::HashMap<&'static str, Vec<&'static str>>,
    lemmas: std::collections::HashMap<&'static str, Vec<&'static str>>,
}

impl Antonyms {
    /// The lemmas a word may be a form of, itself included ("higher":
    /// "higher", "high").
    pub(crate) fn lemmas<'a>(&'static self, word: &'a str) -> impl Iterator<Item = &'a str> {
        std::iter::once(word).chain(self.lemmas.get(word).into_iter().flatten().copied())
    }

    /// The opposites of a lemma.
    pub(crate) fn of(&self, lemma: &str) -> &[&'static str] {
        self.opposite.get(lemma).map_or(&[], Vec::as_slice)
    }
}

/// The antonyms, parsed once.
pub(crate) fn antonyms() -> &'static Antonyms {
    static PARSED: std::sync::OnceLock<Antonyms> = std::sync::OnceLock::new();
    PARSED.get_or_init(|| {
        let mut a = Antonyms {
            opposite: std::collections::HashMap::new(),
            lemmas: std::collections::HashMap::new(),
        };
        for line in ANTONYMS.lines().filter(|l| !l.starts_with('#')) {
            match line.split(' ').collect::<Vec<_>>()[..] {
                [form, "->", lemma] => a.lemmas.entry(form).or_default().push(lemma),
                [x, y] => {
                    a.opposite.entry(x).or_default().push(y);
                    a.opposite.entry(y).or_default().push(x);
                }
                _ => {}
            }
        }
        a
    })
}

/// A group of words that name the same thing; the first is its name.
pub(crate) type Group = &'static [&'static str];

// NOTE: lower-case forms. A Latin word matches a token equal to it or to it
// plus a common suffix (s, es, d, ed, ing, ly); a CJK word matches anywhere.
pub(crate) const UNITS: &[Group] = &[
    &["celsius", "°c", "摂氏", "摄氏"],
    &["fahrenheit", "°f", "華氏", "华氏"],
    &["kelvin"],
    &["second", "sec", "秒"],
    &["minute", "min", "分钟", "分間"],
    &["hour", "hr", "hourly", "小时", "時間"],
    &["day", "daily", "天", "日間"],
    &["week", "weekly", "周", "週間"],
    &["month", "monthly", "个月", "ヶ月", "か月"],
    &["year", "yearly", "annual", "annually", "年"],
    &["millisecond", "ms"],
    &["kilometer", "kilometre", "km", "公里", "キロメートル"],
    &["meter", "metre", "米", "メートル"],
    &["centimeter", "centimetre", "cm", "厘米", "センチ"],
    &["millimeter", "millimetre", "mm"],
    &["mile", "英里", "マイル"],
    &["foot", "feet", "ft"],
    &["inch", "inches"],
    &["yard", "yd"],
    &["kilogram", "kg", "公斤", "キログラム"],
    &["gram", "克", "グラム"],
    &["pound", "lb", "lbs", "磅"],
    &["ounce", "oz"],
    &["liter", "litre", "升", "リットル"],
    &["gallon"],
    &["byte"],
    &["kilobyte", "kb"],
    &["megabyte", "mb"],
    &["gigabyte", "gb"],
    &["terabyte", "tb"],
    &["percent", "%", "百分之"],
    &["dollar", "usd", "$", "美元", "ドル", "dólar", "dólares"],
    &["euro", "eur", "€", "欧元", "ユーロ"],
    &["yen", "jpy", "¥", "円", "日元"],
    &["yuan", "rmb", "cny", "人民币", "元"],
    &["pound sterling", "gbp", "£", "英镑", "ポンド"],
    &["peso"],
];

/// The names of the calendar: days of the week, months and seasons. A
/// changed one is a changed date ("open on Saturday" / "on Friday"). "May",
/// "spring" and "fall" are left out: each is as often another word.
pub(crate) const CALENDAR: &[Group] = &[
    &[
        "monday",
        "lunes",
        "lundi",
        "montag",
        "星期一",
        "周一",
        "月曜",
    ],
    &[
        "tuesday",
        "martes",
        "mardi",
        "dienstag",
        "星期二",
        "周二",
        "火曜",
    ],
    &[
        "wednesday",
        "miércoles",
        "mercredi",
        "mittwoch",
        "星期三",
        "周三",
        "水曜",
    ],
    &[
        "thursday",
        "jueves",
        "jeudi",
        "donnerstag",
        "星期四",
        "周四",
        "木曜",
    ],
    &[
        "friday",
        "viernes",
        "vendredi",
        "freitag",
        "星期五",
        "周五",
        "金曜",
    ],
    &[
        "saturday",
        "sábado",
        "samedi",
        "samstag",
        "星期六",
        "周六",
        "土曜",
    ],
    &[
        "sunday",
        "domingo",
        "dimanche",
        "sonntag",
        "星期日",
        "星期天",
        "周日",
        "日曜",
    ],
    &["january", "enero", "janvier", "januar"],
    &["february", "febrero", "février", "februar"],
    &["march", "marzo", "mars", "märz"],
    &["april", "abril", "avril"],
    &["june", "junio", "juin", "juni"],
    &["july", "julio", "juillet", "juli"],
    &["august", "agosto", "août"],
    &["september", "septiembre", "septembre"],
    &["october", "octubre", "octobre", "oktober"],
    &["november", "noviembre", "novembre"],
    &["december", "diciembre", "décembre", "dezember"],
    &["summer", "verano", "été", "sommer", "夏天", "夏季"],
    &["winter", "invierno", "hiver", "冬天", "冬季"],
    &["autumn", "otoño", "automne", "herbst", "秋天", "秋季"],
];

pub(crate) const POLARITY: &[Group] = &[
    &[
        "enable",
        "turn on",
        "activate",
        "开启",
        "启用",
        "打开",
        "有効",
        "activar",
        "habilitar",
    ],
    &[
        "disable",
        "turn off",
        "deactivate",
        "关闭",
        "禁用",
        "無効",
        "desactivar",
        "deshabilitar",
    ],
    &["ascending", "asc", "升序", "昇順", "ascendente"],
    &["descending", "desc", "降序", "降順", "descendente"],
    &["reverse", "逆順", "反转", "倒序"],
    &["increase", "增加", "増やす", "aumentar"],
    &["decrease", "reduce", "减少", "減らす", "disminuir"],
    &["maximum", "max", "最大"],
    &["minimum", "min", "最小"],
    &["largest", "biggest", "highest", "最多"],
    &["smallest", "lowest", "least", "fewest", "最少"],
    &["first"],
    &["last"],
    &["true"],
    &["false"],
    &["allow", "permit"],
    &["deny", "block", "forbid"],
    &["remove", "delete", "删除", "削除"],
    &["insert", "添加"],
    &["encrypt"],
    &["decrypt"],
    &["upload", "上传"],
    &["download", "下载"],
    &["import"],
    &["export"],
    &["install", "安装"],
    &["uninstall", "卸载"],
    &["subscribe", "订阅"],
    &["unsubscribe", "退订"],
    &["cancel", "取消"],
    &["renew", "续订"],
    &["lock", "锁定"],
    &["unlock", "解锁"],
    &["push"],
    &["pull"],
    &["above"],
    &["below"],
    &["horizontal"],
    &["vertical"],
    &["connect"],
    &["disconnect"],
    &["buy", "purchase", "购买"],
    &["sell", "出售"],
    &["happy", "开心", "高兴"],
    &["sad", "难过", "伤心"],
    &["hot"],
    &["cold"],
    &["mount"],
    &["unmount"],
    &["sumar", "suma", "sume", "sumen"],
    &["restar", "resta", "reste", "resten", "subtract"],
    &["build time"],
    &["run time", "runtime"],
];

/// What a list's order cannot change: a list of numbers in a text that asks
/// for one of these compares as a set.
pub(crate) const ORDER_FREE: &[&str] = &[
    "average",
    "mean",
    "median",
    "mode",
    "sum",
    "total",
    "add up",
    "product",
    "largest",
    "smallest",
    "biggest",
    "highest",
    "lowest",
    "maximum",
    "minimum",
    "max",
    "min",
    "sort",
    "gcd",
    "lcm",
    "greatest common",
    "least common",
    "variance",
    "standard deviation",
    "range",
    "平均",
    "合計",
    "总和",
    "promedio",
    "media",
    "suma",
];

/// Words that only conflict with their opposite: "after" against "within",
/// not "after" against a text that says neither ("I was charged after I
/// cancelled" is "I cancelled but still got charged"). The depth asked of an
/// answer is one such pair: "explain it briefly" and "explain it in detail"
/// want two answers, while "explain it" is either.
pub(crate) const OPPOSITES: &[(Group, Group)] = &[
    (&["before", "prior to", "within"], &["after"]),
    (
        &[
            "briefly",
            "brief",
            "concise",
            "concisely",
            "succinct",
            "succinctly",
            "in a nutshell",
            "in one sentence",
            "in a few words",
            "short answer",
            "tl;dr",
            "brevemente",
            "简要",
            "简短",
            "簡潔",
            "手短",
        ],
        &[
            "in detail",
            "detailed",
            "in depth",
            "in-depth",
            "thorough",
            "thoroughly",
            "comprehensive",
            "step by step",
            "step-by-step",
            "at length",
            "en detalle",
            "detallado",
            "detallada",
            "detalladamente",
            "详细",
            "詳しく",
            "詳細",
        ],
    ),
];

/// The question words, one group per thing asked: a reason, a way, a time, a
/// place, a person. Two texts that each ask one the other does not ("How did
/// the universe begin?" / "When did the universe begin?") ask two things.
/// "What" and "which" ask anything ("What's the way to…" is "How do I…"), so
/// they are in none. An English one asks only when a verb follows it ("when
/// did", "how to", "why don't"): "what happens when it reacts" and "the
/// folder where it is" ask nothing; a Spanish one asks by its accent.
pub(crate) const QUESTION_WORDS: &[Group] = &[
    &["why", "how come", "por qué"],
    &["how", "cómo"],
    &["when", "cuándo"],
    &["where", "dónde"],
    &["who", "whom", "quién", "quiénes"],
];

/// Question words that ask alike when a task follows: "How can I download
/// my invoices?" is "Where can I download my invoices?".
pub(crate) const QUESTION_WORDS_ALIKE: &[(&str, &str)] = &[("how", "where")];

/// The verbs that make a question word ask ("how do", "why is", "when
/// did"); a word ending in "n't" does too.
pub(crate) const QUESTION_VERBS: &[&str] = &[
    "do", "does", "did", "is", "are", "was", "were", "am", "be", "can", "could", "should", "would",
    "will", "shall", "may", "might", "must", "to", "has", "have", "had",
];

pub(crate) const CODE: &[Group] = &[
    &[
        "python", ".py", "pytest", "pip", "django", "flask", "pandas", "numpy",
    ],
    &[
        "javascript",
        "js",
        ".js",
        "node.js",
        "nodejs",
        "npm",
        "jest",
    ],
    &["typescript", "ts", ".ts"],
    &["java", ".java", "junit", "maven"],
    &["kotlin"],
    &["c++", "cpp", ".cpp"],
    &["c#", "csharp", ".net", "dotnet"],
    &[
        "golang",
        "in go",
        "using go",
        "with go",
        "go code",
        "go program",
        "go lang",
    ],
    &["rust", ".rs"],
    &["ruby", "ruby on rails", ".rb"],
    &["php"],
    &["swift"],
    &["scala"],
    &["perl"],
    &["haskell"],
    &["lua"],
    &["dart", "flutter"],
    &["elixir"],
    &["matlab"],
    &["julia"],
    &["bash", "shell", "zsh", ".sh"],
    &["powershell"],
    &["sql", "mysql", "postgres", "postgresql", "sqlite"],
    &["html"],
    &["flexbox"],
    &["css grid", "grid layout"],
    &["react", "jsx"],
    &["vue"],
    &["angular"],
    &["docker", "dockerfile"],
    &["kubernetes", "k8s", "kubectl"],
    &["git"],
    &["excel"],
    &["linux"],
    &["ubuntu"],
    &["debian"],
    &["windows"],
    &["macos", "mac os", "os x", "mac", "macbook"],
    &["ios", "iphone"],
    &["android"],
];

pub(crate) const LANGUAGES: &[Group] = &[
    &["english", "英文", "英语", "英語", "inglés"],
    &["chinese", "mandarin", "中文", "汉语", "中国語", "chino"],
    &["japanese", "日文", "日语", "日本語", "japonés"],
    &["korean", "韩语", "韓国語", "coreano"],
    &["french", "法语", "フランス語", "francés"],
    &["spanish", "西班牙语", "スペイン語", "español"],
    &["german", "德语", "ドイツ語", "alemán"],
    &["italian", "意大利语", "イタリア語"],
    &["portuguese", "葡萄牙语", "ポルトガル語"],
    &["russian", "俄语", "ロシア語"],
];

/// Endings a word may carry and still be a form of a listed word.
pub(crate) const SUFFIXES: [&str; 12] = [
    "", "s", "es", "d", "ed", "ing", "ly", "ion", "ions", "ation", "er", "ers",
];

/// Whether two words are one edit apart (insert, delete, substitute, or swap
/// two neighbours).
pub fn one_edit(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    if a.len().abs_diff(b.len()) > 4 {
        return false;
    }
    // NOTE: no allocation for ASCII words: this runs for every pair of
    // differing words of two texts.
    if a.is_ascii() && b.is_ascii() {
        return one_edit_slice(a.as_bytes(), b.as_bytes());
    }
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    one_edit_slice(&a, &b)
}

fn one_edit_slice<T: PartialEq>(a: &[T], b: &[T]) -> bool {
    if a.len() == b.len() {
        let mut diffs = (0..a.len()).filter(|&i| a[i] != b[i]);
        let first = diffs.next();
        let second = diffs.next();
        let third = diffs.next();
        return match (first, second, third) {
            (None, _, _) => true,
            (Some(_), None, _) => true,
            (Some(i), Some(j), None) => j == i + 1 && a[i] == b[j] && a[j] == b[i],
            _ => false,
        };
    }
    let (short, long) = if a.len() < b.len() { (a, b) } else { (b, a) };
    if long.len() - short.len() != 1 {
        return false;
    }
    let skip = short
        .iter()
        .zip(long)
        .position(|(x, y)| x != y)
        .unwrap_or(short.len());
    short[skip..] == long[skip + 1..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_antonym_list_reads_both_ways_and_by_form() {
        let a = antonyms();
        for (x, y) in [
            ("good", "bad"),
            ("rise", "set"),
            ("high", "low"),
            ("buy", "sell"),
        ] {
            assert!(a.of(x).contains(&y), "{x} / {y}");
            assert!(a.of(y).contains(&x), "{y} / {x}");
        }
        let lemmas = |w: &'static str| a.lemmas(w).collect::<Vec<_>>();
        assert!(lemmas("higher").contains(&"high"));
        assert!(lemmas("worse").contains(&"bad"));
        assert!(lemmas("rising").contains(&"rise"));
        assert_eq!(lemmas("table"), ["table"]);
        // Nouns and quantifiers are not in it.
        assert!(a.of("question").is_empty());
        assert!(a.of("all").is_empty());
    }
}
