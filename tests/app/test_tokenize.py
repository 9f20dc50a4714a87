"""POST /tokenize and /detokenize, with the stand-in tokenizer (one token per word, id = its length)."""

from tests.conftest import STAND_IN_MODEL


def test_tokenize_a_prompt(client):
    response = client.post("/tokenize", json={"prompt": "a bb ccc"})
    assert response.status_code == 200
    assert response.get_json() == {"count": 3, "max_model_len": 256, "tokens": [1, 2, 3]}


def test_tokenize_messages_with_the_chat_template(client):
    body = {"model": STAND_IN_MODEL, "messages": [{"role": "user", "content": "hello there"}]}
    with_prompt = client.post("/tokenize", json=body).get_json()
    # "user: hello there\nassistant:" in the stand-in's template.
    assert with_prompt["tokens"] == [5, 5, 5, 10]
    without = client.post("/tokenize", json={**body, "add_generation_prompt": False}).get_json()
    assert without["tokens"] == [5, 5, 5]


def test_a_message_name_reaches_the_chat_template(client):
    named = [{"role": "system", "content": "be brief"}, {"role": "user", "name": "alice", "content": "hello there"}]
    tokens = client.post("/tokenize", json={"messages": named}).get_json()["tokens"]
    # "system: be brief\nuser alice: hello there\nassistant:" in the stand-in's template.
    assert tokens == [7, 2, 5, 4, 6, 5, 5, 10]
    chat = client.post("/v1/chat/completions", json={"model": STAND_IN_MODEL, "messages": named, "max_tokens": 1})
    assert chat.get_json()["usage"]["prompt_tokens"] == len(tokens)


def test_tokenize_needs_exactly_one_of_prompt_and_messages(client):
    for body in ({}, {"prompt": "a", "messages": [{"role": "user", "content": "b"}]}):
        response = client.post("/tokenize", json=body)
        assert response.status_code == 400
        assert response.get_json()["error"]["param"] == "prompt"


def test_detokenize_round_trips_and_refuses_ids_outside_the_vocabulary(client):
    assert client.post("/detokenize", json={"tokens": [1, 2, 3]}).get_json() == {"prompt": "w ww www"}
    response = client.post("/detokenize", json={"tokens": [1, 1000]})
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["param"] == "tokens[1]" and "vocabulary" in error["message"]
    assert client.post("/detokenize", json={"tokens": [-1]}).get_json()["error"]["param"] == "tokens[0]"


def test_the_model_is_optional_but_must_be_the_served_one(client):
    response = client.post("/detokenize", json={"model": "other", "tokens": [1]})
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "model_not_found"
