"""The real `openai` client against `rayworks serve generate`, as a vLLM user would point it:
models, completions with logprobs and echo, chat through the chat template, streaming on both,
and a bad request named. Every figure the app returns is checked against transformers run here."""

from __future__ import annotations


import openai
import pytest
import torch
import torch.nn.functional as F

from tests.helpers import free_port, start_app, stop_with_ctrl_c, wait_for

PORT = free_port()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A Qwen2-chat-style tiny model served by the app; (client, model directory, transformers model, tokenizer)."""
    from transformers import AutoModelForCausalLM

    from workloads.lm import TinyLMConfig, build_tiny_lm, load_tokenizer

    workdir = tmp_path_factory.mktemp("openai")
    model_dir = build_tiny_lm(TinyLMConfig(tokenizer="qwen2-chat"), workdir / "model", seed=3)
    proc, lines = start_app(workdir, "generate", PORT, "--checkpoint", str(model_dir))
    try:
        wait_for(lines, "is up at", timeout=180)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{PORT}/v1", api_key="unused", max_retries=0, timeout=60)
        yield client, model_dir, AutoModelForCausalLM.from_pretrained(model_dir).eval(), load_tokenizer(model_dir)
    finally:
        assert stop_with_ctrl_c(proc) == 0


def greedy_ids(model, ids: list[int], steps: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=steps, do_sample=False, pad_token_id=0)
    return out[0, len(ids):].tolist()


def logprob_of(model, ids: list[int], position: int) -> float:
    """log p(ids[position] | ids[:position]) by transformers directly."""
    with torch.no_grad():
        logits = model(torch.tensor([ids[:position]])).logits[0, -1]
    return F.log_softmax(logits.float(), dim=-1)[ids[position]].item()


def test_models_lists_the_served_checkpoint(served):
    client, model_dir, _, _ = served
    (model,) = client.models.list().data
    assert model.id == str(model_dir)


def test_completions_with_logprobs_and_echo(served):
    client, model_dir, model, tokenizer = served
    prompt = "Q: 1+2"
    ids = tokenizer.encode(prompt, add_special_tokens=False)  # no BOS: the tokenizer has none
    result = client.completions.create(model=str(model_dir), prompt=prompt, max_tokens=4, temperature=0, logprobs=2)
    choice = result.choices[0]
    generated = greedy_ids(model, ids, 4)
    eos = tokenizer.eos_token_id
    generated = generated[: generated.index(eos)] if eos in generated else generated
    assert choice.text == tokenizer.decode(generated, skip_special_tokens=True)
    assert len(choice.logprobs.tokens) == len(generated)
    for j, value in enumerate(choice.logprobs.token_logprobs):
        assert value == pytest.approx(logprob_of(model, ids + generated, len(ids) + j), abs=1e-4)
        assert len(choice.logprobs.top_logprobs[j]) <= 2 and max(choice.logprobs.top_logprobs[j].values()) >= value - 1e-6
    echoed = client.completions.create(model=str(model_dir), prompt=prompt, max_tokens=2, temperature=0, logprobs=0,
                                       echo=True).choices[0]
    assert echoed.text.startswith(prompt) and echoed.logprobs.token_logprobs[0] is None
    assert echoed.logprobs.token_logprobs[1] == pytest.approx(logprob_of(model, ids, 1), abs=1e-4)
    assert echoed.logprobs.text_offset[: len(ids)] == list(range(len(ids)))  # one character per byte token


def test_chat_goes_through_the_chat_template_with_logprobs(served):
    client, model_dir, model, tokenizer = served
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q: 7+5"}]
    templated = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tokenizer.encode(templated, add_special_tokens=False)
    result = client.chat.completions.create(model=str(model_dir), messages=messages, max_tokens=5, temperature=0,
                                            logprobs=True, top_logprobs=3)
    generated = greedy_ids(model, ids, 5)
    eos = tokenizer.eos_token_id
    generated = generated[: generated.index(eos)] if eos in generated else generated
    choice = result.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == tokenizer.decode(generated, skip_special_tokens=True)
    assert result.usage.prompt_tokens == len(ids)
    content = choice.logprobs.content
    assert len(content) == len(generated) and all(len(item.top_logprobs) == 3 for item in content)
    assert content[0].logprob == pytest.approx(logprob_of(model, ids + generated, len(ids)), abs=1e-4)


def test_streaming_sends_the_same_text_in_pieces(served):
    client, model_dir, _, _ = served
    messages = [{"role": "user", "content": "Q: 3+4"}]
    whole = client.chat.completions.create(model=str(model_dir), messages=messages, max_tokens=8, temperature=0)
    chunks = list(client.chat.completions.create(model=str(model_dir), messages=messages, max_tokens=8, temperature=0,
                                                 stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    text = client.completions.create(model=str(model_dir), prompt="Q: 3+4", max_tokens=8, temperature=0)
    pieces = list(client.completions.create(model=str(model_dir), prompt="Q: 3+4", max_tokens=8, temperature=0, stream=True))
    assert "".join(p.choices[0].text for p in pieces) == text.choices[0].text
    sampled = list(client.completions.create(model=str(model_dir), prompt="Q", max_tokens=6, temperature=1.0, seed=5,
                                             n=2, stream=True))
    assert {p.choices[0].index for p in sampled} == {0, 1}


def test_bad_requests_are_refused_naming_the_field(served):
    client, model_dir, _, _ = served
    with pytest.raises(openai.UnprocessableEntityError, match="top_logprobs"):
        client.chat.completions.create(model=str(model_dir), messages=[{"role": "user", "content": "x"}], top_logprobs=2)
    with pytest.raises(openai.UnprocessableEntityError, match="n"):
        client.completions.create(model=str(model_dir), prompt="x", n=1000)
    with pytest.raises(openai.UnprocessableEntityError, match="messages"):
        client.chat.completions.create(model=str(model_dir), messages=[])


def test_streamma_agents_write_through_the_endpoint_as_they_do_locally(served, local_ray):
    """StreamMA's endpoint path: a step written through the app's streaming completions (stopped
    at the end-of-step marker) is the step the local writer writes from the same checkpoint, and
    a chain of agents pointed at the app streams its steps downstream."""
    from actors.streamma import launch_agents, solve
    from workloads.streamma.agents import EndpointStepWriter, StepWriter
    from workloads.streamma.topology import chain, check_topology

    client, model_dir, model, tokenizer = served
    base_url = str(client.base_url).removesuffix("/v1/").removesuffix("/v1")
    remote, local = EndpointStepWriter(base_url, str(model_dir), 12), StepWriter(model, tokenizer, 12)
    # (this checkpoint's greedy continuations: an empty step, a step cut at 12 tokens, one that decodes to nothing)
    prompts = ["Q: 12+30", "Q: 12+30\n", "A> 3 km = 3000 m\nB> "]
    steps = [(remote.write(p, "solver", 0), local.write(p, "solver", 0)) for p in prompts]
    assert [(r.text, r.tokens, r.truncated) for r, _ in steps] == [(lo.text, lo.tokens, lo.truncated) for _, lo in steps]
    assert {lo.truncated for _, lo in steps} == {True, False} and any(lo.text for _, lo in steps)

    topology = check_topology(chain(2))
    agents = launch_agents(topology, {"solver": str(model_dir), "checker": str(model_dir)}, 12, 3, endpoint=base_url)
    result = solve(agents, topology, "stream", prompts[0])
    assert result["dead"] == [] and result["lost"] == [] and len(result["agents"]["solver"]["steps"]) >= 1
    assert len(result["agents"]["checker1"]["hops"]) == len(result["agents"]["solver"]["steps"])  # it read every solver step
