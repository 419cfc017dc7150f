"""Run llama.cpp's own `convert_hf_to_gguf.py` on tinyscale's Hugging Face export.

    python bench/peers/gguf_convert.py LLAMA_CPP_DIR HF_DIR --outtype f32 --outfile model.gguf

The converter names a BPE tokenizer's pre-tokenizer by hashing how it splits a test string and looking
the hash up in its table of known models; a new tokenizer such as ours is not in the table and the
converter stops. This wrapper labels it "default" and runs the converter unchanged otherwise. The label
only matters to llama.cpp's own text tokenizer, which the benchmark does not use (it feeds token ids).
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path


def main() -> None:
    llama_cpp = Path(sys.argv[1]).resolve()
    sys.path[:0] = [str(llama_cpp), str(llama_cpp / "gguf-py")]
    import convert_hf_to_gguf as converter

    # The class lives in the script in older checkouts, in the `conversion` package in newer ones.
    base = getattr(converter, "TextModel", None) or importlib.import_module("conversion.base").TextModel

    def pre_tokenizer(self, tokenizer) -> str:
        try:
            return original(self, tokenizer)
        except NotImplementedError:
            return "default"

    original = base.get_vocab_base_pre
    base.get_vocab_base_pre = pre_tokenizer
    sys.argv = [str(llama_cpp / "convert_hf_to_gguf.py"), *sys.argv[2:]]
    converter.main()


if __name__ == "__main__":
    main()
