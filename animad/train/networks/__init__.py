"""The network kinds animad trains (network.type), each behind networks.kind.NetworkKind: LoRA first,
then LoKr and LoHa as sd-scripts' networks/lokr.py and loha.py write them."""

from __future__ import annotations

from animad import network_shapes
from animad.anima.facts import NETWORK_MODULES
from animad.errors import UserError
from animad.train.networks.kind import NetworkKind
from animad.train.networks.loha import LoHaModule
from animad.train.networks.lokr import LoKrModule
from animad.train.networks.lora import LoRAModule
from animad.train.networks.lora_maxnorm import apply_max_norm

KINDS = {
    "lora": NetworkKind("lora", "LoRA", LoRAModule, NETWORK_MODULES["lora"], max_norm=apply_max_norm,
                        foreign_parts={"lora_A.weight": "lora_down.weight", "lora_B.weight": "lora_up.weight",
                                       "lora_down": "lora_down.weight", "lora_up": "lora_up.weight"}),
    "lokr": NetworkKind("lokr", "LoKr", LoKrModule, NETWORK_MODULES["lokr"]),
    "loha": NetworkKind("loha", "LoHa", LoHaModule, NETWORK_MODULES["loha"]),
}


def kind_named(name: str) -> NetworkKind:
    """network.type's kind (the job check accepts only these names; this guards older checked jobs)."""
    if name not in KINDS:
        raise UserError(f"network.type: {name} is not a network kind animad trains; use one of {', '.join(KINDS)}")
    return KINDS[name]


def kind_of_file(state) -> NetworkKind | None:
    """The kind of a loaded network file (its keys), None when it holds no module of ours."""
    name = network_shapes.file_kind(state)
    return None if name is None else KINDS[name]
