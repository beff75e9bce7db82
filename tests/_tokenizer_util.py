"""A small tokenizer for tests: the GPT-2 one from ../shared/assets when it is beside the repo, else a
byte-level BPE trained here on a few lines of text, so that tests run on any machine."""
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GPT2_TOK = REPO.parent / "shared" / "assets" / "gpt2-tokenizer"


def small_bpe_tokenizer(lines, vocab_size=300):
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    t.train_from_iterator(list(lines) * 4, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return transformers.PreTrainedTokenizerFast(tokenizer_object=t, bos_token="<|endoftext|>",
                                                eos_token="<|endoftext|>")


def tokenizer_for_tests(lines):
    """The GPT-2 tokenizer if the shared asset is there, else small_bpe_tokenizer(lines)."""
    import transformers

    if GPT2_TOK.is_dir():
        return transformers.AutoTokenizer.from_pretrained(str(GPT2_TOK))
    return small_bpe_tokenizer(lines)
