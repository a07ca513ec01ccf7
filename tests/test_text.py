import pytest

from omni_cli.text import ChunkerOptions, SentenceChunker, SpokenTokens, clean_for_speech


SENTENCES = ChunkerOptions(first_words=0)  # pieces at sentences and clauses only


def pieces(text: str, step: int = 1, options: ChunkerOptions = SENTENCES) -> list[str]:
    chunker = SentenceChunker(options)
    out = []
    for i in range(0, len(text), step):
        out += list(chunker.feed(text[i : i + step]))
    return out + list(chunker.flush())


@pytest.mark.parametrize("step", [1, 3, 1000])
def test_sentences_come_out_as_soon_as_they_end(step):
    text = "The capital of France is Paris. It is big! Is it old? Yes"
    assert pieces(text, step) == ["The capital of France is Paris.", "It is big!", "Is it old?", "Yes"]


def test_a_sentence_is_released_when_the_space_after_it_arrives():
    chunker = SentenceChunker(SENTENCES)
    assert list(chunker.feed("Paris is nice.")) == []  # could still be "3.5" or "e.g."
    assert list(chunker.feed(" Next")) == ["Paris is nice."]


def test_abbreviations_decimals_initials_and_list_markers_do_not_split():
    text = "Dr. Smith paid 3.5 dollars to J. Doe, e.g. for tea. Done."
    assert pieces(text, options=ChunkerOptions(first_clause_chars=1000, clause_chars=1000, first_words=0)) == [
        "Dr. Smith paid 3.5 dollars to J. Doe, e.g. for tea.",
        "Done.",
    ]
    assert pieces("1. Boil water.\n2. Add tea.") == ["1. Boil water.", "2. Add tea."]


def test_long_clauses_split_at_commas_first_piece_sooner():
    options = ChunkerOptions(first_clause_chars=10, clause_chars=40, first_words=0)
    text = "Well, the moon is bright, and it is far away from us, which is nice."
    assert pieces(text, options=options) == ["Well, the moon is bright,", "and it is far away from us, which is nice."]


def test_a_piece_without_boundaries_is_cut_at_a_space():
    text = "word " * 100
    out = pieces(text, options=ChunkerOptions(max_chars=50, first_words=0))
    assert all(len(p) <= 50 for p in out)
    assert " ".join(out).split() == text.split()


@pytest.mark.parametrize("step", [1, 4])
def test_the_first_piece_is_spoken_after_a_few_words_then_sentences(step):
    """As the LLM streams: the first two words go to TTS at once; a whole sentence, when it is
    already there, goes whole."""
    assert pieces("The capital of France is Paris. Yes", 1000, ChunkerOptions()) == ["The capital of France is Paris.", "Yes"]
    text = "The capital of France is Paris. It is big, old and full of museums! Yes"
    assert pieces(text, step, ChunkerOptions()) == ["The capital", "of France is Paris.", "It is big, old and full of museums!", "Yes"]
    assert pieces("Yes, it is. Then more.", step, ChunkerOptions()) == ["Yes, it", "is.", "Then more."]
    assert pieces("Paris. Then more words here.", step, ChunkerOptions()) == ["Paris.", "Then more words here."]


def test_clean_for_speech():
    assert clean_for_speech("**Bold** and `code` see https://x.org/a") == "Bold and code see"
    assert clean_for_speech("- item one") == "item one"
    assert clean_for_speech("2. Pour it") == "Pour it"
    assert clean_for_speech("🙂 *** ") == ""


def spoken(tokens: list[str]) -> str:
    kept = SpokenTokens()
    said = [t for token in tokens for t in kept.push(token, token)]
    return "".join(said + kept.flush())


def test_spoken_tokens_leave_out_markdown_and_list_markers_as_clean_for_speech_does():
    answer = ["Here", " are", " some", ":", "\n", "\n", "1", ".", " **", "App", "les", "**", " are", " good", "\n",
              "2", ".", " Ban", "anas", "\n", "*", " A", "-", "l", "ister", "\n", "-", " item", "\n", "###", " He", "ading"]
    assert spoken(answer) == "Here are some:\n\nApples are good\n Bananas\n A-lister\n item\n Heading"
    assert " ".join(spoken(answer).split()) == clean_for_speech("".join(answer))
    # a number at a line's start that is not a list item's is said
    assert spoken(["1", ".", "5", " million"]) == "1.5 million"
    assert spoken(["1", "9", "8", "0", " was", " a", " year"]) == "1980 was a year"
    assert spoken(["\n", "-", "5", " degrees"]) == "\n-5 degrees"
    assert spoken(["Call", " 1", ".", " Then", " 2", "."]) == "Call 1. Then 2."  # not at a line's start
    assert spoken(["1", "2", ")", " Twelve"]) == " Twelve"
    assert spoken(["Page", "\n", "3"]) == "Page\n3"  # still waiting at the end: flushed, said
    assert spoken(["a", "", "é"]) == "aé"  # a character completed over two tokens
