"""The RNN controller of NASNet (Zoph et al. 2018), which MnasNet reuses.

One-layer LSTM (`nn.LSTMCell`, 100 hidden units), one softmax head per decision; the
decision just taken is embedded (one embedding table per decision) and fed as the next
step's input, with a learned start input before the first decision. Every weight is drawn
from U(-0.1, 0.1). The decisions are just a list of choice counts, so the same controller
drives any `SearchSpace` (`Controller.from_space`).

Logit shaping: `temperature` (logits / T) and `tanh_constant` (C * tanh(logits)) are off by
default because neither the NASNet nor the MnasNet paper uses or reports them; they come
from the ENAS code (Pham et al. 2018: temperature 5, tanh constant 2.5 for op choices) and
are offered for experiments. When both are set the order is C * tanh(logits / T).

`sample` draws sequences without building a graph (their log-probs are the "old" policy
for PPO); `log_prob` re-scores given sequences with gradients (teacher forcing).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mnas.errors import MnasError
from mnas.space.search_space import SearchSpace


class Controller(nn.Module):
    """Autoregressive policy over a fixed list of categorical decisions."""

    def __init__(self, choices: Sequence[int], hidden_size: int = 100, *, temperature: float | None = None,
                 tanh_constant: float | None = None, init_range: float = 0.1,
                 names: Sequence[str] | None = None) -> None:
        super().__init__()
        choices = [int(n) for n in choices]
        if not choices or any(n < 1 for n in choices):
            raise MnasError(f"controller: choices = {choices}: expected a non-empty list of counts >= 1")
        if hidden_size < 1:
            raise MnasError(f"controller: hidden_size = {hidden_size}: expected >= 1")
        if temperature is not None and temperature <= 0:
            raise MnasError(f"controller: temperature = {temperature}: expected > 0 or None")
        if tanh_constant is not None and tanh_constant <= 0:
            raise MnasError(f"controller: tanh_constant = {tanh_constant}: expected > 0 or None")
        if names is not None and len(names) != len(choices):
            raise MnasError(f"controller: {len(names)} names for {len(choices)} decisions: expected one each")
        self.choices = choices
        self.names = list(names) if names is not None else [f"d{i}" for i in range(len(choices))]
        self.hidden_size = hidden_size
        self.temperature = temperature
        self.tanh_constant = tanh_constant
        self.init_range = init_range
        self.cell = nn.LSTMCell(hidden_size, hidden_size)
        self.start = nn.Parameter(torch.empty(1, hidden_size))
        self.heads = nn.ModuleList(nn.Linear(hidden_size, n) for n in choices)
        # embedding i feeds decision i's choice into step i + 1; the last one has no successor
        self.embeddings = nn.ModuleList(nn.Embedding(n, hidden_size) for n in choices[:-1])
        self.reset_parameters()

    @classmethod
    def from_space(cls, space: SearchSpace, hidden_size: int = 100, **kwargs: float | None) -> Controller:
        decisions = space.decisions
        return cls([n for _, n in decisions], hidden_size, names=[name for name, _ in decisions], **kwargs)

    @property
    def num_decisions(self) -> int:
        return len(self.choices)

    def reset_parameters(self) -> None:
        """U(-init_range, init_range) on every weight, as in NASNet."""
        with torch.no_grad():
            for param in self.parameters():
                param.uniform_(-self.init_range, self.init_range)

    def config(self) -> dict[str, object]:
        """Constructor arguments, for storing alongside a checkpoint."""
        return {"choices": list(self.choices), "hidden_size": self.hidden_size, "temperature": self.temperature,
                "tanh_constant": self.tanh_constant, "init_range": self.init_range, "names": list(self.names)}

    def _logits(self, step: int, h: torch.Tensor) -> torch.Tensor:
        logits = self.heads[step](h)
        if self.temperature is not None:
            logits = logits / self.temperature
        if self.tanh_constant is not None:
            logits = self.tanh_constant * torch.tanh(logits)
        return logits

    def _run(self, n: int, tokens: torch.Tensor | None,
             generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Step through every decision, sampling (tokens None) or teacher-forcing `tokens`."""
        x = self.start.expand(n, -1)
        h = x.new_zeros(n, self.hidden_size)
        c = x.new_zeros(n, self.hidden_size)
        chosen: list[torch.Tensor] = []
        log_prob = x.new_zeros(n)
        entropy = x.new_zeros(n)
        for step in range(self.num_decisions):
            h, c = self.cell(x, (h, c))
            log_p = torch.log_softmax(self._logits(step, h), dim=-1)
            if tokens is None:
                action = torch.multinomial(log_p.exp(), 1, generator=generator).squeeze(1)
            else:
                action = tokens[:, step]
            chosen.append(action)
            log_prob = log_prob + log_p.gather(1, action.unsqueeze(1)).squeeze(1)
            entropy = entropy - (log_p.exp() * log_p).sum(dim=-1)
            if step + 1 < self.num_decisions:
                x = self.embeddings[step](action)
        return torch.stack(chosen, dim=1), log_prob, entropy

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`n` sequences: (tokens LongTensor [n, D], log-probs [n], entropies [n]), no gradients.

        The entropy is the sum over decisions of each step's softmax entropy.
        """
        if not isinstance(n, int) or n < 1:
            raise MnasError(f"controller.sample: n = {n!r}: expected an integer >= 1")
        return self._run(n, None, generator)

    def log_prob(self, tokens: torch.Tensor | Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probabilities [n] and entropies [n] of given sequences, with gradients."""
        tokens = self.check_tokens(tokens)
        _, log_prob, entropy = self._run(tokens.shape[0], tokens, None)
        return log_prob, entropy

    def check_tokens(self, tokens: torch.Tensor | Sequence[Sequence[int]]) -> torch.Tensor:
        """Tokens as a LongTensor [n, D]; one-line error naming the first bad value."""
        tensor = torch.as_tensor(tokens, dtype=torch.long) if not isinstance(tokens, torch.Tensor) else tokens.long()
        if tensor.dim() != 2 or tensor.shape[1] != self.num_decisions or tensor.shape[0] < 1:
            raise MnasError(f"controller: tokens of shape {tuple(tensor.shape)}: expected [n >= 1, {self.num_decisions}]")
        limits = torch.tensor(self.choices)
        bad = (tensor < 0) | (tensor >= limits)
        if bool(bad.any()):
            row, col = (int(v) for v in bad.nonzero()[0])
            raise MnasError(f"controller: token {self.names[col]} of sequence {row} = {int(tensor[row, col])}: "
                            f"expected an integer in [0, {self.choices[col] - 1}]")
        return tensor
