"""``fold_key_mask``: the padding mask folded into ``Q K^T`` gives the same embeddings as the
traced graph on padded batches, and is applied only to a key padding mask (a causal mask, or a
graph that is not the pattern, is left as it was)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
onnx = pytest.importorskip("onnx", reason="the onnx extra is not installed")

from contralign.encoders.onnx_attention import fold_key_mask  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

TEXTS = ["a cat", "", "the quick brown fox jumps over the lazy dog again and again",
         "contrastive learning of sentence embeddings", "ok", "a somewhat longer sentence here"]


def _session(model: Any) -> Any:
    from contralign.encoders.onnx_tower import ort_session

    return ort_session(model.SerializeToString())


def _bert_graph(tmp_path: Path, tiny_model_dir: Path, *, causal: bool) -> Any:
    """The tiny BERT traced with eager attention: (input_ids, attention_mask) -> hidden states."""
    import torch
    from transformers import BertModel

    model = BertModel.from_pretrained(tiny_model_dir, is_decoder=causal,
                                      attn_implementation="eager").eval()

    class Graph(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.model(input_ids=input_ids,
                              attention_mask=attention_mask).last_hidden_state

    ids = torch.tensor([[101, 2000, 2001, 102], [101, 2002, 102, 0]])
    path = tmp_path / ("causal.onnx" if causal else "bert.onnx")
    axes = {"input_ids": {0: "b", 1: "t"}, "attention_mask": {0: "b", 1: "t"}}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notes
        torch.onnx.export(Graph(), (ids, (ids > 0).long()), str(path), dynamo=False,
                          input_names=["input_ids", "attention_mask"], opset_version=17,
                          dynamic_axes=axes)
    return onnx.load(str(path))


def test_folded_graph_embeds_as_the_traced_one_on_padded_batches(
        tmp_path: Path, tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    traced = _bert_graph(tmp_path, tiny_model_dir, causal=False)
    folded = onnx.ModelProto()
    folded.CopyFrom(traced)
    assert fold_key_mask(folded) == 2  # both layers
    ops = [node.op_type for node in folded.graph.node]
    assert ops.count("Add") == [n.op_type for n in traced.graph.node].count("Add") - 2
    onnx.checker.check_model(folded)
    batch = AutoTokenizer.from_pretrained(tiny_model_dir)(
        TEXTS, padding=True, return_tensors="np", return_token_type_ids=False)
    feed = {name: batch[name].astype(np.int64) for name in ("input_ids", "attention_mask")}
    expected = _session(traced).run(None, feed)[0]  # (B, T, hidden)
    got = _session(folded).run(None, feed)[0]
    real = batch["attention_mask"].astype(bool)  # padded positions' states are not used
    assert np.abs(got[real] - expected[real]).max() <= 1e-6


def test_a_causal_mask_is_left_alone(tmp_path: Path, tiny_model_dir: Path) -> None:
    from contralign.encoders.onnx_attention import _attention_layers

    causal = _bert_graph(tmp_path, tiny_model_dir, causal=True)
    assert len(_attention_layers(causal.graph)) == 2  # the pattern is there; the mask is not
    before = causal.SerializeToString()
    assert fold_key_mask(causal) == 0
    assert causal.SerializeToString() == before


def test_a_graph_that_is_not_the_pattern_is_left_alone() -> None:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])
    graph = helper.make_graph([helper.make_node("Softmax", ["x"], ["y"], axis=-1)], "g", [x], [y])
    model = helper.make_model(graph)
    before = model.SerializeToString()
    assert fold_key_mask(model) == 0 and model.SerializeToString() == before


def test_a_graph_with_external_weights_is_left_unfolded(
        tmp_path: Path, tiny_model_dir: Path) -> None:
    """Weights beside the graph (how a model over 2 GB is saved) cannot be rewritten as one
    message: the export leaves such a graph as traced."""
    from contralign.encoders.onnx_export import _fold_attention_mask

    path = tmp_path / "external" / "model.onnx"
    path.parent.mkdir()
    onnx.save(_bert_graph(tmp_path, tiny_model_dir, causal=False), str(path),
              save_as_external_data=True, size_threshold=0)
    before = path.read_bytes()
    assert _fold_attention_mask(path) == 0 and path.read_bytes() == before
    assert _fold_attention_mask(tmp_path / "bert.onnx") == 2  # the same graph, self-contained
