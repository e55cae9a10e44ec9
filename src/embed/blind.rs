//! What the embedding model cannot see: the spans of a text its tokenizer
//! maps to the unknown token, and the words it can only spell letter by
//! letter.
//!
//! Owns finding those spans (a Chinese character missing from an English
//! WordPiece vocabulary, an emoji, a script the model never learnt, a Greek
//! or Arabic word it holds only the letters of) and the folding of
//! full-width forms that the model and the guards read alike. Two texts
//! that differ only there embed alike, or as letter soup, so a similarity
//! over them says nothing: the judge asks the reader or requires such spans
//! to be equal. It must never decide a hit itself, and never run the model:
//! it only tokenizes.

use tokenizers::Tokenizer;

/// A full-width form as the ASCII it stands for (`１００００` is `10000`,
/// `？` is `?`), the ideographic space as a space. WordPiece vocabularies
/// know the ASCII and not the full-width forms, which Chinese and Japanese
/// text often uses for digits and Latin letters: folded, the model reads
/// them, and the guards compare them as what they are.
pub fn fold_width(c: char) -> char {
    match c {
        '\u{FF01}'..='\u{FF5E}' => char::from_u32(c as u32 - 0xFEE0).unwrap_or(c),
        '\u{3000}' => ' ',
        _ => c,
    }
}

/// `text` with its full-width forms folded ([`fold_width`]), borrowed when
/// it has none.
pub fn folded(text: &str) -> std::borrow::Cow<'_, str> {
    if text.chars().any(|c| fold_width(c) != c) {
        std::borrow::Cow::Owned(text.chars().map(fold_width).collect())
    } else {
        std::borrow::Cow::Borrowed(text)
    }
}

/// How much of a text [`Blind::unseen`] reads: tokens and their offsets cost
/// memory, and a text this long is far past the embedding window.
pub const UNSEEN_BYTES: usize = 64 * 1024;

/// The spans a model's tokenizer cannot represent.
pub struct Blind {
    tokenizer: Tokenizer,
    unknown: u32,
}

impl std::fmt::Debug for Blind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blind")
            .field("unknown", &self.unknown)
            .finish()
    }
}

impl Blind {
    /// From a model's tokenizer (padding and truncation off), if it has an
    /// unknown token (`[UNK]` for WordPiece vocabularies); None when every
    /// text can be represented.
    pub fn new(tokenizer: Tokenizer) -> Option<Blind> {
        let unknown = ["[UNK]", "<unk>"]
            .iter()
            .find_map(|t| tokenizer.token_to_id(t))?;
        Some(Blind { tokenizer, unknown })
    }

    /// The spans of `text` the model sees only as its unknown token, in
    /// order (empty when it sees it all, or the text cannot be tokenized),
    /// read as the model reads it: full-width forms folded. Only the first
    /// [`UNSEEN_BYTES`] bytes are read: past them a text is the long-text
    /// guard's, which wants it equal or one short edit apart.
    pub fn unseen(&self, text: &str) -> Vec<String> {
        let text = &*folded(text);
        let mut end = text.len().min(UNSEEN_BYTES);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let text = &text[..end];
        let Ok(enc) = self.tokenizer.encode(text, false) else {
            return Vec::new();
        };
        // NOTE: a word is read as its pieces; it is unseen when one of them
        // is the unknown token, or when it is only spelled: a word of
        // another script that the vocabulary holds letters of and nothing
        // longer ("как" is к ##а ##к). Such a word embeds as letter soup:
        // "cancel" and "renew" in Greek or Arabic scored 0.94 to 0.97.
        let (ids, offsets, words) = (enc.get_ids(), enc.get_offsets(), enc.get_word_ids());
        let mut out = Vec::new();
        let mut i = 0;
        while i < ids.len() {
            let mut j = i + 1;
            while j < ids.len() && words[j].is_some() && words[j] == words[i] {
                j += 1;
            }
            let unknown = ids[i..j].contains(&self.unknown);
            let span = text.get(offsets[i].0..offsets[j - 1].1).unwrap_or("");
            if unknown {
                out.extend(
                    (i..j)
                        .filter(|&k| ids[k] == self.unknown)
                        .filter_map(|k| text.get(offsets[k].0..offsets[k].1))
                        .map(str::to_string),
                );
            } else if j - i >= 2 && spelled(text, &offsets[i..j]) {
                out.push(span.to_string());
            }
            i = j;
        }
        out
    }
}

/// Whether each of a word's pieces (byte ranges of `text`) is one letter
/// of a script other than ASCII: the vocabulary has nothing of the word
/// longer than a letter.
fn spelled(text: &str, pieces: &[(usize, usize)]) -> bool {
    pieces.iter().all(|&(a, b)| {
        let mut cs = text.get(a..b).unwrap_or("").chars();
        matches!((cs.next(), cs.next()), (Some(c), None) if c.is_alphabetic() && !c.is_ascii())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minilm() -> Option<Blind> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("models/all-minilm-l6-v2-int8/tokenizer.json");
        // NOTE: `make test` fetches the model; a bare `cargo test` may not have it.
        let mut t = Tokenizer::from_file(&path).ok()?;
        t.with_padding(None);
        t.with_truncation(None).ok()?;
        Blind::new(t)
    }

    #[test]
    fn the_spans_minilm_cannot_see() {
        let Some(b) = minilm() else {
            eprintln!("skipped: run `make models`");
            return;
        };
        assert!(b.unseen("How do I upload a file to the server?").is_empty());
        // Upload and download, to the model: [UNK] in other places.
        let up = b.unseen("如何上传文件到服务器？");
        let down = b.unseen("如何从服务器下载文件？");
        assert!(!up.is_empty() && !down.is_empty());
        assert_ne!(up, down);
        assert_eq!(
            up,
            b.unseen("如何上传文件到服务器？"),
            "the same text, the same spans"
        );
        // Characters it knows are not unseen; an emoji is.
        assert!(b.unseen("上海").is_empty(), "{:?}", b.unseen("上海"));
        assert_eq!(b.unseen("what does 🫠 mean"), ["🫠"]);
        // A word of a script it only spells, letter by letter, is not read
        // either; a word it has pieces of is.
        assert_eq!(
            b.unseen("Как отменить подписку?"),
            ["Как", "отменить", "подписку"]
        );
        assert_eq!(
            b.unseen("كيف ألغي اشتراكي؟"),
            ["كيف", "ألغي", "اشتراكي", "؟"]
        );
        assert!(b.unseen("Wie kündige ich mein Abonnement?").is_empty());
        assert!(b.unseen("¿Cómo cancelo mi suscripción?").is_empty());
        // Full-width digits are read as the digits they are.
        assert_eq!(
            b.unseen("１００００円は何ドルですか？"),
            b.unseen("10000円は何ドルですか？")
        );
        assert!(!b.unseen("１００００円").iter().any(|s| s.contains('１')));
        // A huge text is read only up to its first UNSEEN_BYTES, at a
        // character boundary.
        let huge = format!("{}🫠", "é ".repeat(UNSEEN_BYTES / 3));
        assert!(b.unseen(&huge).is_empty());
    }
}
