"""Model soups and the MODEL / tokenizer resolution every post-training command shares."""

import pytest
import torch

from post_fixtures import one_thread, USER_ASSISTANT, chatml_encoder, llama3_encoder, tiny_config, tiny_model
from pasture.model import load, save
from pasture.post.average import ArchitectureMismatch, average_models
from pasture.post.models import load_encoder, save_encoder


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_thread():
        yield


def test_average_is_the_mean_of_the_weights(tmp_path):
    a, b = tiny_model(seed=1), tiny_model(seed=2)
    save(a, tmp_path / "a")
    save(b, tmp_path / "b")
    save_encoder(llama3_encoder(), tmp_path / "a")
    out = average_models([str(tmp_path / "a"), str(tmp_path / "b")], tmp_path / "soup", log=lambda *_: None)
    soup, _ = load(out)
    for name, tensor in soup.state_dict().items():
        torch.testing.assert_close(tensor, (a.state_dict()[name] + b.state_dict()[name]) / 2)
    # the soup carries the tokenizer of its first model
    assert load_encoder(out).encode(USER_ASSISTANT).tokens == llama3_encoder().encode(USER_ASSISTANT).tokens


def test_average_refuses_different_architectures_naming_the_tensor(tmp_path):
    save(tiny_model(), tmp_path / "a")
    from pasture.model import build

    save(build(tiny_config(dim=48)), tmp_path / "b")
    with pytest.raises(ArchitectureMismatch, match=r"tok_embeddings.weight has shape \(512, 48\), not \(512, 32\)"):
        average_models([str(tmp_path / "a"), str(tmp_path / "b")], tmp_path / "soup")
    save(build(tiny_config(n_layers=3)), tmp_path / "c")
    with pytest.raises(ArchitectureMismatch, match="layers.2.attention.wq.weight is extra"):
        average_models([str(tmp_path / "a"), str(tmp_path / "c")], tmp_path / "soup")


def test_template_encoder_round_trips_through_a_run_folder(tmp_path):
    encoder = chatml_encoder()
    save_encoder(encoder, tmp_path)
    again = load_encoder(tmp_path)
    first, second = encoder.encode(USER_ASSISTANT), again.encode(USER_ASSISTANT)
    assert first.tokens == second.tokens and first.loss_mask == second.loss_mask
    assert again.stop_ids == [257] and 256 in again.format_ids
