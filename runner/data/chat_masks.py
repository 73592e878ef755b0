"""Loss on assistant turns for any chat template, with or without `{% generation %}` markers.

TRL masks assistant turns only through `{% generation %}` markers, and swaps in a marked copy only
for templates it knows byte for byte: SmolLM2's, Llama 3.1/3.2's and Gemma 4's are refused. Here the
mask is read off the model's own template instead, from what it renders:

- the text trained on is exactly `apply_chat_template(conversation)`, tokenized as transformers
  tokenizes it, so inference sees what training saw;
- each assistant turn's content is found by rendering the conversation again with that content
  replaced by a sentinel: the two renders differ exactly where the content went, however the
  template trims, reformats or wraps it;
- an assistant turn that calls tools is found the same way, by rendering it again as a plain turn whose
  content is the sentinel: the renders differ over everything the template writes for the turn after its
  header (content, `<tool_call>` wrappers, names, arguments), which is what the model must learn to write;
  tool results, like user turns, carry no loss;
- the end-of-turn marker is what the template writes after the content both when the conversation
  ends there and when a user turn follows (`<|im_end|>`, `<|eot_id|>`, `<end_of_turn>`; trailing
  whitespace left out), or, where those differ from the first token on, the one added token the
  template writes there (gpt-oss ends a turn with `<|end|>` mid-conversation and `<|return|>` at the end);
- a token carries loss when its characters overlap a trained span.

A template this cannot read (it drops an assistant's content, or writes no end-of-turn token, so the
model would never learn to stop) is refused by `template_problems` before any weights load.
"""
from __future__ import annotations

from dataclasses import dataclass

from runner.data import tool_calls
from runner.errors import Problem
from runner.plan import chat_tools

SENTINEL = "\ue000\ue001"  # private-use characters: never in real text, never merged with a neighbour
FOLLOWING = {"role": "user", "content": "Thanks."}  # a turn after an assistant's, to see how the template closes it
LOOKAHEAD = 256  # characters after a turn's content in which its end-of-turn marker must lie

# The conversation every template is checked with before training: a system turn, two assistant turns.
PROBE = (
    {"role": "system", "content": "You answer briefly."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Italy?"},
    {"role": "assistant", "content": "Rome."},
)

# The conversation a template must render when the data call tools: the call's name, its argument and the
# tool's result must all appear, the call carrying loss and the result not.
TOOLS = (
    {"type": "function", "function": {"name": "get_weather", "description": "The current weather in a city.",
                                      "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                     "required": ["city"]}}},
)
TOOL_PROBE = (
    {"role": "user", "content": "What is the weather in the capital of Iceland?"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Reykjavik"}}}]},
    {"role": "tool", "name": "get_weather", "content": "Sleet, 2 degrees"},
    {"role": "assistant", "content": "Cold and wet."},
)
# What of TOOL_PROBE a template with tool support writes: (named in a message, the text).
TOOL_PIECES = (("the call's function name", "get_weather"), ("its arguments", "Reykjavik"),
               ("the tool's result", "Sleet, 2 degrees"))
TOOL_FIX = chat_tools.TOOL_FIX  # the same fix `validate` names when it can see the template cannot write calls

FIX = ("name a Jinja template file in model.chat_template that renders every assistant turn and ends it with an "
       "end-of-turn token, or set training.assistant_only_loss to false (completion_only_loss for prompt/completion "
       "data) to train on every token")


class TemplateError(ValueError):
    """The template cannot be masked safely; the message says what it does."""


@dataclass(frozen=True)
class Rendered:
    text: str  # the conversation as the template renders it
    spans: tuple[tuple[int, int], ...]  # characters that carry loss: each trained turn's content and end marker


class ChatMasks:
    """Assistant-turn loss masks for one tokenizer (and the chat template it carries)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.added = frozenset(tokenizer.get_added_vocab().values())  # special and other added tokens

    def render(self, messages, tools=None) -> str:
        """`tools`: the function schemas the conversation was given (a list or its JSON string; None: none)."""
        return self.tokenizer.apply_chat_template(tool_calls.for_template(messages), tokenize=False,
                                                  tools=tool_calls.tools_for_template(tools))

    def rendered(self, messages, first_trained: int = 0, tools=None) -> Rendered:
        """The conversation's text and the spans of its assistant turns from index `first_trained` on."""
        text = self.render(messages, tools)
        spans = []
        for index, turn in enumerate(messages):
            if turn["role"] == "assistant" and index >= first_trained:
                start, end = self.content_span(messages, index, text, tools)
                spans.append((start, end + self.end_marker_length(messages, index, text[end:end + LOOKAHEAD], tools)))
        return Rendered(text, tuple(spans))

    def tokenized(self, messages, first_trained: int = 0, tools=None) -> dict:
        """{"input_ids", "assistant_masks"}: the rendering tokenized, 1 on tokens of trained assistant turns."""
        found = self.rendered(messages, first_trained, tools)
        encoding = self.tokenizer(found.text, add_special_tokens=False, return_offsets_mapping=True)
        mask = [int(any(s < stop and e > start for start, stop in found.spans)) for s, e in encoding["offset_mapping"]]
        return {"input_ids": encoding["input_ids"], "assistant_masks": mask}

    def content_span(self, messages, index: int, text: str, tools=None) -> tuple[int, int]:
        """Where turn `index`'s content lies in `text` (the render of `messages`): where a re-render differs. For a
        turn that calls tools, the re-render is a plain turn whose content is the sentinel: the span is everything
        the template writes for the turn after its header, the calls included."""
        probe = [dict(turn) for turn in messages]
        calls = messages[index].get("tool_calls")
        probe[index] = {"role": "assistant", "content": SENTINEL} if calls else {**probe[index], "content": SENTINEL}
        other = self.render(probe, tools)
        start = _common_prefix(text, other)
        tail = _common_prefix(text[start:][::-1], other[start:][::-1])
        if SENTINEL not in other[start:len(other) - tail]:
            raise TemplateError(f"it does not render the content of {_turn(messages, index)}")
        if calls and not all(call["function"]["name"] in text[start:len(text) - tail] for call in calls):
            raise TemplateError(f"it does not render the tool calls of {_turn(messages, index)}")
        return start, len(text) - tail

    def end_marker_length(self, messages, index: int, after: str, tools=None) -> int:
        """Characters of `after` (the text following turn `index`'s content) that end the turn."""
        head = list(messages[:index + 1])
        closings = [self._closing(head, index, tools), self._closing(head + [FOLLOWING], index, tools)]
        pieces = self.tokenizer(after, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = pieces["input_ids"], pieces["offset_mapping"]
        shared = min(_common_prefix(ids, self.tokenizer(c, add_special_tokens=False)["input_ids"]) for c in closings)
        if shared == 0 and ids and ids[0] in self.added:
            shared = 1  # the template ends this turn with a token of its own (another one at the very end)
        length = len(after[:offsets[shared - 1][1]].rstrip()) if shared else 0
        if length == 0:
            raise TemplateError(f"it writes no end-of-turn token after {_turn(messages, index)}, so the model "
                                f"would never learn to stop")
        return length

    def _closing(self, messages, index: int, tools=None) -> str:
        text = self.render(messages, tools)
        return text[self.content_span(messages, index, text, tools)[1]:][:LOOKAHEAD]


def loss_options(plan: dict) -> dict:
    """The resolved loss options of a plan: SFTConfig's completion_only_loss and the runner's assistant_only_loss."""
    return {**plan["trainer"]["config"], **plan["trainer"]["runner_settings"]}


def first_trained(row: dict, loss: dict) -> int | None:
    """The turn from which assistant turns carry loss in a row the runner masks; None: the row is not one.

    `loss`: the resolved assistant_only_loss (conversations) and completion_only_loss (prompt/completion).
    """
    if "messages" in row:
        return 0 if loss.get("assistant_only_loss") else None
    if isinstance(row.get("prompt"), list) and isinstance(row.get("completion"), list):
        return len(row["prompt"]) if loss.get("completion_only_loss") else None
    return None


def conversation(row: dict) -> list:
    return list(row["messages"]) if "messages" in row else list(row["prompt"]) + list(row["completion"])


def masked_by_runner(row: dict, loss: dict) -> bool:
    return first_trained(row, loss) is not None


def row_tokens(masks: ChatMasks, row: dict, loss: dict) -> dict:
    """A conversational row the runner masks (see first_trained) as token ids and its assistant mask."""
    return masks.tokenized(conversation(row), first_trained(row, loss), row.get("tools"))


def template_problems(tokenizer, where: str = "/model/chat_template") -> list[Problem]:
    """[] when the template can be masked; else why, at `where`, with the fix. Decodes PROBE's trained tokens."""
    if not getattr(tokenizer, "is_fast", False):
        return [Problem(where, "assistant-only loss needs a fast tokenizer (character offsets per token)", FIX)]
    masks = ChatMasks(tokenizer)
    probe = PROBE if _renders(masks, PROBE) else PROBE[1:]  # some templates (Gemma 1/2) refuse system turns
    try:
        found = masks.rendered(probe)
        got = decoded_runs(tokenizer, masks.tokenized(probe))
    except TemplateError as exc:
        return [Problem(where, f"cannot tell the assistant turns in the chat template's output: {exc}", FIX)]
    except Exception as exc:  # noqa: BLE001 - a template that fails on a plain conversation
        return [Problem(where, f"the chat template fails on a plain conversation: {type(exc).__name__}: "
                               f"{_first_line(exc)}", FIX)]
    wanted = [found.text[start:stop] for start, stop in found.spans]
    if got != wanted:
        return [Problem(where, f"the tokenizer merges assistant text with the template's own around it: the tokens "
                               f"trained on decode to {got!r} instead of {wanted!r}", FIX)]
    return []


def tool_problems(tokenizer, found_in: str, masked: bool, where: str = "/model/chat_template") -> list[Problem]:
    """[] when the template renders TOOL_PROBE's call (name and argument) and the tool's result, and, where the runner
    masks the loss (`masked`), trains on the call and not on the result; else what it does, at `where`, naming the
    data that call tools (`found_in`) and the fix. Run before any weights load."""
    head = f"the data call tools ({found_in}), but the chat template "
    masks = ChatMasks(tokenizer)
    try:
        text = masks.render(TOOL_PROBE, TOOLS)
    except Exception as exc:  # noqa: BLE001 - jinja's raise_exception and any template error
        return [Problem(where, f"{head}fails on a conversation with a tool call: {type(exc).__name__}: "
                               f"{_first_line(exc)}", TOOL_FIX)]
    dropped = [what for what, piece in TOOL_PIECES if piece not in text]
    if dropped:
        return [Problem(where, f"{head}drops {' and '.join(dropped)} (it has no tool support)", TOOL_FIX)]
    if not masked:
        return []
    try:
        found = masks.rendered(TOOL_PROBE, tools=TOOLS)
        got = decoded_runs(tokenizer, masks.tokenized(TOOL_PROBE, tools=TOOLS))
    except TemplateError as exc:
        return [Problem(where, f"{head}renders them so that the assistant's turns cannot be told apart: {exc}",
                        TOOL_FIX)]
    except Exception as exc:  # noqa: BLE001 - it refuses the plain turn put in for the call (see content_span)
        return [Problem(where, f"{head}cannot be masked on it: it fails when the turn that calls tools is rendered "
                               f"as a plain answer: {type(exc).__name__}: {_first_line(exc)}", TOOL_FIX)]
    trained = [found.text[start:stop] for start, stop in found.spans]
    call, result = TOOL_PIECES[0][1], TOOL_PIECES[2][1]
    if not trained or call not in trained[0] or any(result in span for span in trained):
        return [Problem(where, f"{head}writes the call outside the assistant's turn, or the result inside it",
                        TOOL_FIX)]
    if got != trained:
        return [Problem(where, f"{head}writes tool calls whose tokens merge with the text around them: the tokens "
                               f"trained on decode to {got!r} instead of {trained!r}", TOOL_FIX)]
    return []


def decoded_runs(tokenizer, tokens: dict) -> list[str]:
    """The text of each run of loss-carrying tokens."""
    runs, current = [], []
    for token, trained in zip(tokens["input_ids"], tokens["assistant_masks"]):
        if trained:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    return [tokenizer.decode(run) for run in runs + ([current] if current else [])]


def _renders(masks: ChatMasks, messages) -> bool:
    try:
        masks.render(messages)
        return True
    except Exception:  # noqa: BLE001 - jinja's raise_exception and any template error
        return False


def _common_prefix(a, b) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _turn(messages, index: int) -> str:
    return f"turn {index + 1} ({messages[index]['role']})"


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
