"""The LLM caption rewriter against a scripted OpenAI-compatible server and a tiny random transformers model.

Offline and CPU only: tests/openai_server.py serves scripted replies on 127.0.0.1, and the causal LM is built from a
config with a tokenizer trained on the fly.
"""

from __future__ import annotations

import json
import logging
import socket

import pytest
from clipneg.generators.llm import (
    PARAPHRASE,
    TEMPLATE_KINDS,
    BackendError,
    ChatRequest,
    LLMConfig,
    LLMRewriter,
    build_backend,
    build_messages,
    check_reply,
    load_template,
    parse_retry_after,
)
from clipneg.generators.llm.backends import SEED_MODULUS

from clipneg.schema import NegText, Sample, sample_to_members
from tests.openai_server import Reply, ScriptedServer, query_of

SECRET = "sk-test-3f9a1c7e5b2d8e4f6a0b"
KEY_ENV = "CLIPNEG_TEST_LLM_KEY"
PNG = b"\x89PNG\r\n\x1a\n" + b"0" * 16  # shard bytes only: nothing here decodes the image
KINDS = ("replace_att", "swap_att", PARAPHRASE)


def sample(key: str, caption: str) -> Sample:
    return Sample(key, PNG, "png", caption)


def caption_of(tag: str) -> str:
    return f"a red cube left of a blue ball {tag}"


def valid(kind: str, caption: str) -> dict:
    """A correct reply for captions made by caption_of."""
    if kind == "replace_att":
        return {"kind": kind, "abstain": False, "reason": "", "edit": {"from": "red", "to": "green"},
                "caption": caption.replace("red", "green")}
    if kind == "swap_att":
        swapped = caption.replace("red", "@").replace("blue", "red").replace("@", "blue")
        return {"kind": kind, "abstain": False, "reason": "", "edit": {"first": "red", "second": "blue"},
                "caption": swapped}
    return {"kind": kind, "abstain": False, "reason": "", "edit": {}, "caption": f"there is {caption}"}


def fault_script():
    """Per-caption behaviour, named by the caption's tag; the same for every kind."""
    first_seed: dict = {}

    def script(body: dict, seen: int) -> Reply:
        kind, caption = query_of(body)
        tag = caption.rsplit(" ", 1)[-1]
        ok = Reply.json(valid(kind, caption))
        if tag == "flaky":
            return Reply.error(500) if seen < 2 else ok
        if tag == "ratelimit":
            return Reply.error(429, retry_after="0.3") if seen == 0 else ok
        if tag == "slow":
            return Reply(delay=1.0, content=ok.content) if seen == 0 else ok
        if tag == "dropped":
            return Reply(drop=True) if seen == 0 else ok
        if tag == "down":
            return Reply.error(503)
        if tag == "badjson":
            return Reply(content='{"kind": "' + kind + '", "caption": "a gre')
        if tag == "cut":
            return Reply(content='{"kind": "' + kind + '", "abstain": false, "reason": "", "edit": {"fr',
                         finish_reason="length")
        if tag == "echo":
            return Reply.json({**valid(kind, caption), "caption": caption.upper() + "."})
        if tag == "wrongkind":
            return Reply.json({**valid(kind, caption), "kind": "add_obj"})
        if tag == "abstain":
            return Reply.json({"kind": kind, "abstain": True, "reason": "no", "edit": {}, "caption": ""})
        if tag == "reask":  # the first seed gets an echo, the re-ask (a new seed) a valid edit
            if first_seed.setdefault((kind, caption), body["seed"]) == body["seed"]:
                return Reply.json({**valid(kind, caption), "caption": caption})
            return ok
        if tag == "long":
            reply = valid(kind, caption)
            return Reply.json({**reply, "caption": reply["caption"] + " and " + "very " * 80 + "tall"})
        return ok

    return script


TAGS = ["ok", "flaky", "ratelimit", "slow", "dropped", "down", "badjson", "cut", "echo", "wrongkind", "abstain",
        "reask", "long"]


def config(url: str, cache_dir=None, **kw) -> LLMConfig:
    base = dict(backend="openai", base_url=url, model="scripted-model", api_key_env=KEY_ENV, kinds=KINDS, k=1,
                seed=7, temperature=0.5, max_tokens=96, reasks=1, max_in_flight=8, retries=3, backoff=0.01,
                max_backoff=1.0, timeout=0.4, cache_dir=cache_dir and str(cache_dir), token_counter="approx")
    base.update(kw)
    return LLMConfig(**base)


def run(cfg: LLMConfig, chunk: list[Sample]) -> tuple[list[Sample], LLMRewriter]:
    with LLMRewriter(cfg) as stage:
        return stage(chunk), stage


def test_templates_cover_every_kind_and_pass_their_own_checks():
    for kind in TEMPLATE_KINDS:
        t = load_template(kind)
        assert t.id == f"{kind}/v1" and len(t.sha256) == 64 and len(t.examples) >= 6
        for ex in t.examples:  # every demonstration is a reply our filters accept (or an abstention)
            v = check_reply(t, ex["caption"], json.dumps(t.example_reply(ex)), "stop")
            assert v.reason == ("abstain" if "abstain" in ex else None), (kind, ex, v)
        a, b = build_messages(t, "a dog on a red sofa", 1, 3), build_messages(t, "a dog on a red sofa", 1, 3)
        assert a == b and a[0]["role"] == "system" and a[-1]["content"].endswith("a dog on a red sofa")
        assert len(a) == 1 + 2 * 3 + 1
        shots = {tuple(m["content"] for m in build_messages(t, "x", s, 3)[1:-1]) for s in range(8)}
        assert len(shots) > 1  # the seed picks the demonstrations
    with pytest.raises(ValueError, match="no LLM prompt template"):
        load_template("negate")


@pytest.mark.parametrize(("text", "finish", "reason"), [
    ('{"kind": "replace_att", "abstain": false', "length", "truncated"),
    ("", "stop", "empty"),
    ("Sure! Here you go: a green cube", "stop", "not json"),
    ('{"kind": "replace_att", "abstain": true, "reason": "nothing to change"}', "stop", "abstain"),
    ('{"kind": "swap_att", "edit": {"from": "red", "to": "green"}, "caption": "a green cube"}', "stop", "wrong kind"),
    ('{"kind": "replace_att", "edit": {"from": "red"}, "caption": "a green cube"}', "stop", "bad edit"),
    ('{"kind": "replace_att", "edit": {"from": "red", "to": "green"}, "caption": "A red cube!"}', "stop", "echo"),
    ('{"kind": "replace_att", "edit": {"from": "pink", "to": "green"}, "caption": "a green cube"}', "stop",
     "edit mismatch"),
    ('{"kind": "replace_att", "edit": {"from": "red", "to": "green"}, "caption": "a green ' + "big " * 80 + 'cube"}',
     "stop", "too long"),
    ('{"kind": "replace_att", "edit": {"from": "red", "to": "green"}, "caption": "a green cube"}', "stop",
     "duplicate"),
    ('```json\n{"kind": "replace_att", "edit": {"from": "red", "to": "blue"}, "caption": " a  blue cube "}\n```',
     "stop", None),
])
def test_check_reply_reasons(text, finish, reason):
    v = check_reply(load_template("replace_att"), "a red cube", text, finish, taken={"a green cube"})
    assert v.reason == reason
    if reason is None:
        assert v.text == "a blue cube" and v.edit == {"from": "red", "to": "blue"}


def test_parse_retry_after_forms():
    assert parse_retry_after({"retry-after": "2"}) == 2.0
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:10 GMT"}, now=1445412480.0) == 10.0
    assert parse_retry_after({"retry-after": "soon"}) is None and parse_retry_after({}) is None


def test_faults_are_retried_bounded_rejected_by_reason_and_key_never_leaks(tmp_path, monkeypatch, caplog):
    """Given a server that errs, rate-limits, stalls, drops, and answers garbage, echoes, wrong kinds and
    over-long captions, when the stage runs, then every caption comes back, each reply is kept or rejected by
    reason, retries are bounded, and the API key appears only in the Authorization header on the wire."""
    monkeypatch.setenv(KEY_ENV, SECRET)
    caplog.set_level(logging.DEBUG)
    chunk = [sample(f"k{i:02d}", caption_of(tag)) for i, tag in enumerate(TAGS)]
    with ScriptedServer(fault_script()) as server:
        cfg = config(server.url, tmp_path / "cache")
        out, stage = run(cfg, chunk)
        sent = list(server.requests)

        assert [s.key for s in out] == [s.key for s in chunk]
        by_tag = dict(zip(TAGS, out, strict=True))
        for tag in ("ok", "flaky", "ratelimit", "slow", "dropped", "reask"):
            s = by_tag[tag]
            assert [(t.kind, t.gen) for t in s.neg_texts] == [("replace_att", "llm"), ("swap_att", "llm")]
            assert s.neg_texts[0].text == caption_of(tag).replace("red", "green")
            assert [p.text for p in s.paraphrases] == [f"there is {caption_of(tag)}"]
            assert s.paraphrases[0].negatives == ()
            assert all(0 <= t.seed < SEED_MODULUS for t in s.neg_texts)
            s.validate()
        for tag in ("down", "badjson", "cut", "echo", "wrongkind", "abstain", "long"):
            assert by_tag[tag].neg_texts == [] and by_tag[tag].paraphrases == []

        st = stage.stats
        for kind in KINDS:  # every reply received is kept or rejected; the reasons are exactly the scripted ones
            assert st.produced[kind] == st.kept[kind] + sum(n for (k, _, _), n in st.rejected.items() if k == kind)
            assert st.kept[kind] == 6
            assert {r: n for (k, f, r), n in st.rejected.items() if k == kind and f == "llm"} == {
                "not json": 2, "truncated": 2, "echo": 3, "wrong kind": 2, "abstain": 1, "too long": 2}
        x = st.extra
        assert x["slots"] == 39 and x["unfilled"] == 21 and x["slots"] == sum(st.kept.values()) + x["unfilled"]
        assert x["requests"] == 39 + 18 and x["reasks"] == 18 and x["cache_hits"] == 0
        assert x["retries"] == 3 * (2 + 1 + 1 + 1 + 3) and x["failures"] == 3
        assert len(sent) == x["requests"] + x["retries"]  # bounded: "down" got exactly 1 + retries tries per kind
        assert x["prompt_tokens"] == 50 * sum(st.produced.values()) == 50 * (x["requests"] - x["failures"])
        assert st.samples_without == 7

        # The wire: seeded, bounded, schema-constrained, authorised.
        for r in sent:
            assert r.headers["authorization"] == f"Bearer {SECRET}"
            assert r.body["max_tokens"] == 96 and r.body["temperature"] == 0.5 and r.body["model"] == "scripted-model"
            assert isinstance(r.body["seed"], int) and 0 <= r.body["seed"] < SEED_MODULUS
            assert r.body["response_format"]["type"] == "json_schema"
            assert r.body["response_format"]["json_schema"]["schema"]["properties"]["kind"]["enum"] == [
                query_of(r.body)[0]]
            assert "n" not in r.body and "guided_json" not in r.body
        limited = [r.time for r in sent if query_of(r.body) == ("replace_att", caption_of("ratelimit"))]
        assert len(limited) == 2 and limited[1] - limited[0] >= 0.29  # Retry-After honoured

        # The key is nowhere but the header: not in logs, manifest, cache files or shard members.
        manifest = json.dumps(stage.manifest())
        cache_bytes = b"".join(p.read_bytes() for p in (tmp_path / "cache").iterdir())
        shard_bytes = b"".join(json.dumps({k: v if isinstance(v, str) else v.decode("latin-1")
                                           for k, v in sample_to_members(s).items()}).encode() for s in out)
        assert caplog.records and "request failed after 4 tries: HTTP 503" in caplog.text
        for blob in (caplog.text, manifest, repr(stage.backend), str([r.args for r in caplog.records])):
            assert SECRET not in blob
        assert SECRET.encode() not in cache_bytes and SECRET.encode() not in shard_bytes
        assert KEY_ENV in manifest and "127.0.0.1" in manifest

        # A rerun on the same cache asks again only for what failed ("down": 3 kinds x 4 tries on the wire).
        again, stage2 = run(cfg, chunk)
        assert len(server.requests) - len(sent) == 3 * 4
        assert stage2.stats.extra["requests"] == 3 and stage2.stats.extra["cache_hits"] == 39 - 3 + 18
        assert again == out


def test_rerun_with_the_same_cache_sends_zero_requests(tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    chunk = [sample(f"s{i}", caption_of(tag)) for i, tag in enumerate(["ok", "reask", "echo", "a", "b"])]
    with ScriptedServer(fault_script()) as server:
        cfg = config(server.url, tmp_path / "cache", k=2)
        first, stage1 = run(cfg, chunk)
        n = len(server.requests)
        assert n == stage1.stats.extra["requests"] > 0
        second, stage2 = run(cfg, chunk)
        assert len(server.requests) == n  # zero requests
        assert stage2.stats.extra["requests"] == 0
        assert stage2.stats.extra["cache_hits"] == stage1.stats.extra["requests"]
        assert second == first and stage2.stats.kept == stage1.stats.kept
        # k=2: the second slot of a kind is a duplicate of the first (the script is deterministic), re-asked
        assert stage1.stats.rejected[("replace_att", "llm", "duplicate")] > 0
        # A different seed is a different cache key.
        third, stage3 = run(config(server.url, tmp_path / "cache", k=2, seed=8), chunk)
        assert stage3.stats.extra["requests"] > 0


def test_concurrency_is_bounded_by_max_in_flight():
    with ScriptedServer(fault_script(), delay=0.05) as server:
        chunk = [sample(f"s{i}", caption_of(f"t{i}")) for i in range(8)]
        out, stage = run(config(server.url, kinds=("replace_att", "swap_att"), max_in_flight=3,
                                use_response_format=False), chunk)
        assert server.peak_in_flight == 3
        assert sum(stage.stats.kept.values()) == 16
        assert all("response_format" not in r.body for r in server.requests)
        assert all("authorization" not in r.headers for r in server.requests)  # no key set: none sent


def test_connection_refused_never_crashes(tmp_path, caplog):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed when the block ends: nothing listens there
    chunk = [sample("s0", caption_of("a")), sample("s1", caption_of("b"))]
    chunk[0].neg_texts.append(NegText("a blue cube left of a red ball", "swap_att", "rules"))
    out, stage = run(config(f"http://127.0.0.1:{port}/v1", tmp_path, retries=2), chunk)
    assert [len(s.neg_texts) for s in out] == [1, 0]  # the sample keeps its other negatives
    x = stage.stats.extra
    assert x["failures"] == x["slots"] == x["unfilled"] == 6 and x["retries"] == 12 and not stage.stats.produced
    assert "connection error" in caplog.text


def test_bad_key_or_url_stops_with_a_hint(tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    with ScriptedServer(lambda body, seen: Reply.error(401)) as server:
        with pytest.raises(BackendError, match=KEY_ENV) as err:
            run(config(server.url, tmp_path), [sample("s0", caption_of("a"))])
        assert SECRET not in str(err.value)
    with pytest.raises(BackendError, match="base_url must be an http"):
        run(config("127.0.0.1:8000", tmp_path), [sample("s0", caption_of("a"))])


def test_manifest_and_config():
    stage = LLMRewriter(LLMConfig(base_url="http://user:pw@10.0.0.5:8000/v1?token=abc", model="m", kinds=KINDS))
    m = stage.manifest()
    assert m["name"] == "llm" and m["backend"] == {"kind": "openai", "model": "m",
                                                    "base_url": "http://10.0.0.5:8000/v1"}
    assert "pw" not in json.dumps(m) and "abc" not in json.dumps(m)
    assert m["templates"]["swap_att"] == {"id": "swap_att/v1", "sha256": load_template("swap_att").sha256}
    assert m["sampling"]["max_tokens"] == 160 and m["config"]["api_key_env"] == "OPENAI_API_KEY"
    with pytest.raises(ValueError, match="backend"):
        LLMConfig(backend="gpt")
    with pytest.raises(ValueError, match="kinds"):
        LLMConfig(kinds=("negate",))


@pytest.fixture(scope="module")
def tiny_lm():
    """A 1-layer GPT-2 with random weights and a word-level tokenizer trained here on the prompt vocabulary."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    corpus = [m["content"] for kind in TEMPLATE_KINDS for m in build_messages(load_template(kind), "x", 0, 6)]
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=["[UNK]", "[PAD]", "[EOS]"]))
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]")
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=hf_tok.vocab_size, n_positions=1024, n_embd=32, n_layer=1,
                                       n_head=2, bos_token_id=2, eos_token_id=2, pad_token_id=1))
    return model, hf_tok


def test_transformers_backend_garbage_is_rejected_not_crashed(tiny_lm, tmp_path):
    from clipneg.generators.llm import TransformersBackend

    model, tok = tiny_lm
    backend = TransformersBackend(model, tok, device="cpu", batch_size=4, model_id="tiny-gpt2")
    chunk = [sample(f"s{i}", caption_of(t)) for i, t in enumerate(["a", "b", "c"])]
    cfg = LLMConfig(backend="transformers", model="tiny-gpt2", kinds=("replace_att", PARAPHRASE), k=1,
                    max_tokens=8, reasks=1, n_examples=1, token_counter="approx", cache_dir=str(tmp_path))
    with LLMRewriter(cfg, backend=backend) as stage:
        out = stage(chunk)
    st = stage.stats
    assert [s.key for s in out] == ["s0", "s1", "s2"]
    assert sum(st.produced.values()) == sum(st.kept.values()) + sum(st.rejected.values()) >= 6
    assert {r for (_, f, r) in st.rejected} <= {"truncated", "not json", "empty", "wrong kind", "bad edit"}
    assert st.extra["requests"] == sum(st.produced.values()) and st.extra["completion_tokens"] > 0
    assert stage.manifest()["backend"] == {"kind": "transformers", "model": "tiny-gpt2", "device": "cpu"}

    # Seeded per request: the same request gives the same text, alone or batched with others.
    msgs = tuple(build_messages(load_template("replace_att"), "a red cube", 3, 1))
    r1, r2 = ChatRequest(msgs, 11, 6, 1.0), ChatRequest(msgs[:-1] + ({"role": "user", "content": "hi"},), 12, 6, 1.0)
    alone = backend.complete([r1])[0]
    assert backend.complete([r1])[0] == alone
    assert backend.complete([r2, r1])[1].text == alone.text
    assert alone.finish_reason in {"stop", "length"} and alone.prompt_tokens > 0

    # By path, as a real run names a local folder or a hub id.
    model.save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    by_path = build_backend(LLMConfig(backend="transformers", model=str(tmp_path / "tiny"), device="cpu"))
    assert by_path.model_id == str(tmp_path / "tiny") and by_path.complete([r1])[0].text == alone.text

    # A tokenizer with a chat template goes through it; greedy decoding (temperature 0) works too.
    tok.chat_template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}assistant:{% endif %}")
    try:
        greedy = backend.complete([ChatRequest(msgs, 1, 4, 0.0), ChatRequest(msgs, 2, 4, 0.0)])
        assert greedy[0].text == greedy[1].text  # greedy ignores the seed
    finally:
        tok.chat_template = None


def test_written_shards_carry_llm_negatives_and_no_key(tmp_path, monkeypatch):
    from clipneg.generators.pipeline import StagePipeline

    from clipneg.shards import write_shards

    monkeypatch.setenv(KEY_ENV, SECRET)
    chunk = [sample(f"s{i}", caption_of(tag)) for i, tag in enumerate(["ok", "echo", "reask"])]
    with ScriptedServer(fault_script()) as server:
        stage = LLMRewriter(config(server.url, tmp_path / "cache"))
        pipeline = StagePipeline([stage])
        write_shards(chunk, tmp_path / "shards", process_batch=pipeline, shard_size=10, progress=False,
                     info={"generators": pipeline.manifest()})
        stage.close()
    files = [p for p in (tmp_path / "shards").rglob("*") if p.is_file()]
    blob = b"".join(p.read_bytes() for p in files)
    assert files and SECRET.encode() not in blob
    assert b'"gen": "llm"' in blob and b"there is a red cube left of a blue ball ok" in blob


def test_garbled_200_is_retried_and_400_is_not(caplog):
    def script(body: dict, seen: int) -> Reply:
        kind, caption = query_of(body)
        if caption.endswith("garbled"):
            return Reply(raw=b"<html>bad gateway</html>") if seen == 0 else Reply.json(valid(kind, caption))
        return Reply(status=400, raw=b'{"error": "response_format json_schema is not supported"}')

    with ScriptedServer(script) as server:
        chunk = [sample("s0", caption_of("garbled")), sample("s1", caption_of("refused"))]
        out, stage = run(config(server.url, kinds=("replace_att",)), chunk)
    x = stage.stats.extra
    assert len(out[0].neg_texts) == 1 and out[1].neg_texts == []
    assert x["retries"] == 1 and x["failures"] == 1 and len(server.requests) == 3  # the 400 is not retried
    assert "set use_response_format=False" in caplog.text


def test_duplicate_captions_in_a_chunk_share_requests():
    with ScriptedServer(fault_script()) as server:
        chunk = [sample("s0", caption_of("a")), sample("s1", caption_of("a")), sample("s2", caption_of("b"))]
        out, stage = run(config(server.url, kinds=("replace_att",)), chunk)
        assert len(server.requests) == stage.stats.extra["requests"] == 2
        assert out[0].neg_texts == out[1].neg_texts and stage.stats.kept["replace_att"] == 3


def test_empty_chunk_and_missing_vllm(tmp_path):
    with LLMRewriter(config("http://127.0.0.1:9/v1", tmp_path)) as stage:
        assert stage([]) == [] and stage.stats.extra["requests"] == 0
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(BackendError, match="pip install vllm"):
            build_backend(LLMConfig(backend="vllm", model="some/model"))


@pytest.mark.slow
def test_open_clip_token_counter_bounds_length():
    from clipneg.generators.llm.checks import approx_clip_tokens, open_clip_tokens

    short, long = "a red cube left of a blue ball", "a " + "very " * 80 + "tall tree"
    assert open_clip_tokens(short) == 8 and open_clip_tokens(long) > 77
    reply = json.dumps({"kind": "replace_att", "edit": {"from": "red", "to": "big"}, "caption": "a big " + long})
    v = check_reply(load_template("replace_att"), "a red tree", reply, "stop", count_tokens=open_clip_tokens)
    assert v.reason == "too long" and approx_clip_tokens(short) == 8
