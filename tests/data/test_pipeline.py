"""Tests for moe_jax.data.pipeline: packing, masks, sharding, resumable state."""

import itertools
import json

import numpy as np
import pytest

from moe_jax.data import pipeline
from moe_jax.data.tasks import TASKS, generate_split
from moe_jax.data.tokenizer import CharTokenizer

TOK = CharTokenizer()


@pytest.fixture(scope="module")
def source():
    # Mixed lengths: arithmetic prompts+solutions run from ~15 to ~45 characters.
    return generate_split(TASKS["arithmetic"], "train", 96, seed=0, max_operands=4)


def _texts(source):
    return {e.prompt + e.solution: e for e in source}


def _segments(batch):
    """(row, segment id, slice) of every packed example in a batch."""
    for row, ids in enumerate(batch["segment_ids"]):
        for seg in np.unique(ids[ids > 0]):
            where = np.flatnonzero(ids == seg)
            assert np.array_equal(where, np.arange(where[0], where[-1] + 1)), "not contiguous"
            yield row, int(seg), slice(where[0], where[-1] + 1)


def test_tokenize_example_layout():
    example = TASKS["arithmetic"].generate(np.random.default_rng(0))
    seg = pipeline.tokenize_example(example, TOK)
    prompt, solution = TOK.encode(example.prompt), TOK.encode(example.solution)
    assert seg["inputs"].tolist() == [TOK.bos_id] + prompt + solution + [TOK.eos_id]
    assert seg["targets"].tolist() == prompt + solution + [TOK.eos_id, TOK.pad_id]
    # Loss on exactly the len(solution) + 1 targets that are solution or <eos>.
    expected_mask = [0.0] * len(prompt) + [1.0] * (len(solution) + 1) + [0.0]
    assert seg["loss_mask"].tolist() == expected_mask
    assert (seg["inputs"].dtype, seg["targets"].dtype, seg["loss_mask"].dtype) == (
        np.int32, np.int32, np.float32)
    with pytest.raises(ValueError, match="does not fit seq_len=10"):
        pipeline.tokenize_example(example, TOK, seq_len=10)


@pytest.mark.parametrize("packing", pipeline.PACKING_MODES)
def test_batches_are_correct_segments(source, packing):
    texts = _texts(source)
    ds = pipeline.train_dataset(source, TOK, global_batch_size=4, seq_len=96, seed=0,
                                packing=packing)
    segments_per_row = []
    for batch in itertools.islice(iter(ds), 6):
        assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {
            "inputs": ((4, 96), np.int32), "targets": ((4, 96), np.int32),
            "loss_mask": ((4, 96), np.float32), "segment_ids": ((4, 96), np.int32),
            "positions": ((4, 96), np.int32)}
        padding = batch["segment_ids"] == 0
        assert (batch["inputs"][padding] == TOK.pad_id).all()
        assert (batch["loss_mask"][padding] == 0).all()
        assert (batch["positions"][padding] == 0).all()
        counts = np.zeros(4, int)
        for row, seg, span in _segments(batch):
            counts[row] += 1
            inputs, targets = batch["inputs"][row, span], batch["targets"][row, span]
            mask = batch["loss_mask"][row, span]
            assert seg == counts[row]  # Ids run 1, 2, ... in order.
            assert batch["positions"][row, span].tolist() == list(range(len(inputs)))
            assert inputs[0] == TOK.bos_id and inputs[-1] == TOK.eos_id
            example = texts[TOK.decode(inputs)]  # Decodes to a source example.
            # Targets are the next input within the segment; the last is padding.
            assert targets[:-1].tolist() == inputs[1:].tolist()
            assert targets[-1] == TOK.pad_id and mask[-1] == 0
            # The mask selects exactly solution + <eos> among the targets.
            assert targets[mask == 1].tolist() == TOK.encode(example.solution) + [TOK.eos_id]
            first = int(np.argmax(mask))
            assert mask[first:-1].all() and not mask[:first].any()
        segments_per_row.extend(counts)
    if packing == "pad":
        assert set(segments_per_row) == {1}
    else:
        # 96-token rows hold two or three 20-46 token examples.
        assert np.mean(segments_per_row) > 2


@pytest.mark.parametrize("packing", pipeline.PACKING_MODES)
def test_one_epoch_sees_each_example_at_most_once(source, packing):
    ds = pipeline.train_dataset(source, TOK, global_batch_size=4, seq_len=96, seed=1,
                                num_epochs=1, packing=packing)
    seen = [TOK.decode(b["inputs"][r, span]) for b in ds for r, _, span in _segments(b)]
    assert len(seen) == len(set(seen))
    assert set(seen) <= set(_texts(source))
    if packing == "pad":
        assert len(seen) == len(source)  # 96 examples = 24 full batches of 4.


def test_processes_get_disjoint_shards_that_cover_the_epoch(source):
    per_process = []
    for index in range(2):
        ds = pipeline.train_dataset(source, TOK, global_batch_size=8, seq_len=96, seed=2,
                                    num_epochs=1, packing="pad", process_index=index,
                                    process_count=2)
        batches = list(ds)
        assert all(b["inputs"].shape == (4, 96) for b in batches)
        per_process.append([TOK.decode(row) for b in batches for row in b["inputs"]])
    assert not set(per_process[0]) & set(per_process[1])
    assert set(per_process[0]) | set(per_process[1]) == set(_texts(source))
    # Packed mode: rows differ between processes too.
    packed = [next(iter(pipeline.train_dataset(
        source, TOK, global_batch_size=8, seq_len=96, seed=2, process_index=i,
        process_count=2)))["inputs"] for i in range(2)]
    assert not {r.tobytes() for r in packed[0]} & {r.tobytes() for r in packed[1]}
    with pytest.raises(ValueError, match="divisible"):
        pipeline.train_dataset(source, TOK, global_batch_size=5, seq_len=96, seed=0,
                               process_count=2)


def test_same_seed_same_batches_and_epochs_reshuffle(source):
    def first_rows(seed, n):
        ds = pipeline.train_dataset(source, TOK, global_batch_size=4, seq_len=96, seed=seed,
                                    packing="pad")
        return [TOK.decode(r) for b in itertools.islice(iter(ds), n) for r in b["inputs"]]

    assert first_rows(0, 5) == first_rows(0, 5)
    assert first_rows(0, 5) != first_rows(1, 5)
    two_epochs = first_rows(0, 48)  # 2 x 96 examples.
    assert sorted(two_epochs[:96]) == sorted(two_epochs[96:])
    assert two_epochs[:96] != two_epochs[96:]


@pytest.mark.parametrize("packing", pipeline.PACKING_MODES)
def test_iterator_state_restores_exactly(source, packing):
    def make():
        return pipeline.train_dataset(source, TOK, global_batch_size=4, seq_len=96, seed=5,
                                      packing=packing)

    it = iter(make())
    for _ in range(5):
        next(it)
    # The state goes into a checkpoint as JSON; it must survive that trip.
    state = json.loads(json.dumps(it.get_state()))
    expected = [next(it) for _ in range(3)]
    resumed = iter(make())  # A fresh process after a restart.
    resumed.set_state(state)
    for want in expected:
        got = next(resumed)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])
    # And the original iterator can be rewound too.
    it.set_state(state)
    np.testing.assert_array_equal(next(it)["inputs"], expected[0]["inputs"])


def test_curriculum_order():
    lengths = [5, 1, 4, 1, 3, 2, 9, 7]
    order = pipeline.curriculum_order(lengths, seed=0, fraction=0.5)
    assert sorted(order.tolist()) == list(range(8))
    # The 4 shortest first, ascending; the rest after them.
    assert [lengths[i] for i in order[:4]] == [1, 1, 2, 3]
    assert {lengths[i] for i in order[4:]} == {4, 5, 7, 9}
    # Ties and the tail follow the seed.
    orders = {tuple(pipeline.curriculum_order(lengths, seed, 0.5)) for seed in range(20)}
    assert len(orders) > 1
    assert pipeline.curriculum_order(lengths, 3, 0.0).tolist() != sorted(
        range(8), key=lengths.__getitem__)
    with pytest.raises(ValueError, match="fraction"):
        pipeline.curriculum_order(lengths, 0, 1.5)


@pytest.mark.parametrize("packing", pipeline.PACKING_MODES)
def test_curriculum_reorders_the_first_epoch_only(source, packing):
    def examples(curriculum, n):
        ds = pipeline.train_dataset(source, TOK, global_batch_size=4, seq_len=96, seed=0,
                                    packing="pad", curriculum=curriculum)
        return [TOK.decode(b["inputs"][r, span]) for b in itertools.islice(iter(ds), n)
                for r, _, span in _segments(b)]

    texts = _texts(source)
    curriculum, plain = examples(0.25, 48), examples(0.0, 48)  # two epochs of 96
    first = [len(texts[t].solution) for t in curriculum[:24]]
    assert first == sorted(len(e.solution) for e in source)[:24]
    assert sorted(curriculum[:96]) == sorted(plain[:96])  # the same epoch, reordered
    assert curriculum[96:] == plain[96:]  # later epochs are the plain stream's
    # Resumes exactly from an iterator state, as the plain stream does.
    ds = pipeline.train_dataset(source, TOK, global_batch_size=4, seq_len=96, seed=0,
                                packing=packing, curriculum=0.25)
    it = iter(ds)
    for _ in range(3):
        next(it)
    state = json.loads(json.dumps(it.get_state()))
    want = next(it)
    resumed = iter(ds)
    resumed.set_state(state)
    np.testing.assert_array_equal(next(resumed)["inputs"], want["inputs"])


def test_reads_tfds_records(tmp_path):
    from moe_jax.data import tfds_builders

    records = tfds_builders.load_task_split("countdown", "train", tmp_path, num_train=24,
                                            num_test=4)
    batch = next(iter(pipeline.train_dataset(records, TOK, global_batch_size=2, seq_len=128,
                                             seed=0)))
    texts = {(r["prompt"] + r["solution"]).decode() for r in records.__getitems__(range(24))}
    for row, _, span in _segments(batch):
        assert TOK.decode(batch["inputs"][row, span]) in texts
    # The curriculum reads lengths in chunks of records, as it would from 100k of them.
    assert pipeline._solution_lengths(records, chunk=5) == [
        len(records[i]["solution"]) for i in range(24)]


def test_tokenizer_without_bos(source):
    class NoBos(CharTokenizer):
        def __init__(self):
            super().__init__()
            self.bos_id = None

    seg = pipeline.tokenize_example(source[0], NoBos())
    assert seg["inputs"].tolist() == TOK.encode(source[0].prompt + source[0].solution) + [2]
    assert seg["loss_mask"].sum() == len(source[0].solution) + 1


@pytest.mark.parametrize("pad_side", ["left", "right"])
def test_eval_batches(pad_side):
    examples = generate_split(TASKS["countdown"], "test", 10, seed=0)
    records = [{k: (v.encode() if isinstance(v, str) else v) for k, v in vars(e).items()}
               for e in examples]
    longest = max(len(e.prompt) for e in examples) + 1  # + <bos>
    seen = []
    for index in range(2):
        batches = list(pipeline.eval_batches(
            records, TOK, task="countdown", batch_size=2, pad_side=pad_side,
            process_index=index, process_count=2))
        assert len(batches) == 3  # 5 examples per process in batches of 2.
        for batch in batches:
            assert batch["prompt_tokens"].shape == (2, longest)
            assert len(batch["examples"]) == batch["valid"].sum()
            for row, example in enumerate(batch["examples"]):
                tokens, length = batch["prompt_tokens"][row], batch["prompt_lengths"][row]
                real = tokens[-length:] if pad_side == "left" else tokens[:length]
                pads = tokens[:-length] if pad_side == "left" else tokens[length:]
                assert real.tolist() == [TOK.bos_id] + TOK.encode(example.prompt)
                assert (pads == TOK.pad_id).all()
                seen.append(example)
        last = batches[-1]
        assert last["valid"].tolist() == [True, False]
        assert (last["prompt_tokens"][1] == TOK.pad_id).all() and last["prompt_lengths"][1] == 0
    assert sorted(seen, key=str) == sorted(examples, key=str)
    with pytest.raises(ValueError, match="exceeds prompt_len"):
        next(pipeline.eval_batches(examples, TOK, task="countdown", batch_size=2, prompt_len=4))
