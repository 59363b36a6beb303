"""The network: sd-scripts' --network_module and --network_args as network.type, dim, alpha, factor and
the dropouts.

LoKr and LoHa come in several spellings: sd-scripts' own `networks.lokr` / `networks.loha`, LyCORIS'
`lycoris.kohya` with `algo=lokr|loha`, a widely used fork's `networks.lokr_anima`, and the GUIs'
fields (importer/gui.py turns those into the same flags). Each becomes `network.type` with its
factor. A kind animad does not train (KronA, OFT, IA3, DyLoRA, ...) becomes the closest kind it
does, named as a problem.
"""

from __future__ import annotations

import dataclasses

from animad.anima.facts import NETWORK_MODULES
from animad.config.job import NetworkConfig
from animad.importer.flags import NO_EQUIVALENT, SAME, SHADOWED, SUPERSEDED
from animad.importer.records import Unmapped
from animad.importer.sources import Flag, Sources, key_values

# network.dim's bound, as config/job.py states it (sd-scripts' "full matrix" LoKr configs write 100000)
MAX_DIM = {f.name: f for f in dataclasses.fields(NetworkConfig)}["dim"].metadata["max"]
ANIMA_LORA = NETWORK_MODULES["lora"]  # sd-scripts' Anima LoRA module
# The kind we train in place of another network, and why (named by a module and by LyCORIS' algo alike)
KRONA = ("lokr", "KronA is not trained here; LoKr, a Kronecker product too, is the closest")
OFT = ("lora", "OFT is not trained here; the closest low-parameter kind is a LoRA")
# module -> (kind, why it is not exactly that kind, or None)
MODULES = {
    ANIMA_LORA: ("lora", None),
    NETWORK_MODULES["lokr"]: ("lokr", None), NETWORK_MODULES["loha"]: ("loha", None),
    "networks.lokr_anima": ("lokr", None), "networks.loha_anima": ("loha", None),
    "networks.lora": ("lora", f"networks.lora is sd-scripts' Stable Diffusion LoRA; Anima's is {ANIMA_LORA}, the "
                              "same kind"),
    "networks.lora_fa": ("lora", "LoRA-FA (a frozen down-projection) is not trained here; the closest is a LoRA "
                                 "with both sides trained"),
    "networks.dylora": ("lora", "DyLoRA (a LoRA trained at many ranks at once) is not trained here; the closest is "
                                "a LoRA at network.dim"),
    "networks.oft": ("lora", "OFT (an orthogonal rotation of the weights) is not trained here; the closest "
                             "low-parameter kind is a LoRA"),
    "networks.oft_flux": OFT,
    "networks.krona": ("lokr", "KronA (a Kronecker-product adapter) is not trained here; LoKr, a Kronecker product "
                               "too, is the closest"),
}
LYCORIS = {
    "lora": ("lora", None), "locon": ("lora", None), "lokr": ("lokr", None), "loha": ("loha", None),
    "kron": KRONA, "krona": KRONA,
    "ia3": ("lora", "IA3 (a learned scale per channel) is not trained here; the closest is a small LoRA"),
    "dylora": ("lora", "DyLoRA is not trained here; the closest is a LoRA at network.dim"),
    "glora": ("lora", "GLoRA is not trained here; the closest is a LoRA"),
    "full": ("lora", "native fine-tuning (full weight deltas) is not trained here; the closest is a LoRA (raise "
                     "network.dim for more capacity)"),
    "diag-oft": OFT,
    "boft": ("lora", "BOFT is not trained here; the closest low-parameter kind is a LoRA"),
}
# network_args that have no key here, and why
ARG_REASONS = {
    "conv_dim": "no conv layers are trained here: animad's networks train the DiT's linears",
    "conv_alpha": "no conv layers are trained here: animad's networks train the DiT's linears",
    "conv_block_dims": "no conv layers are trained here", "conv_block_alphas": "no conv layers are trained here",
    "use_tucker": "Tucker decomposition is for conv kernels; only linears are trained here",
    "use_cp": "CP decomposition is for conv kernels; only linears are trained here",
    "use_scalar": "no trained scalar on the delta here",
    "decompose_both": "LoKr's w1 is a full (small) matrix here, as in sd-scripts' networks/lokr.py",
    "bypass_mode": "how the delta is applied is animad's choice; the trained result is the same",
    "rank_dropout_scale": "rank dropout is rescaled as sd-scripts does",
    "train_norm": "norm layers are not trained here", "dora_wd": "no DoRA here",
    "wd_on_output": "no DoRA here", "weight_decompose": "no DoRA here",
    "preset": "the trained modules are network.targets here (self_attn, cross_attn, mlp)",
    "target_modules": "the trained modules are network.targets here (self_attn, cross_attn, mlp)",
    "constrain": "an OFT option; OFT is not trained here", "rescaled": "an OFT option; OFT is not trained here",
    "train_on_input": "an IA3 option; IA3 is not trained here", "unit": "a DyLoRA option", "block_size": "a DyLoRA "
    "option", "loraplus_lr_ratio": "no LoRA+ here (one learning rate for both sides)",
    "loraplus_unet_lr_ratio": "no LoRA+ here", "loraplus_text_encoder_lr_ratio": "no LoRA+ here",
    "lokr_full_matrix": None, "full_matrix": None,
}


def kind_of(module: Flag | None, args: dict, out) -> str:
    """network.type for the module (and its algo), with a problem where it is only the closest kind."""
    name = str(module.value).strip() if module else ANIMA_LORA
    if name == "lycoris.kohya":
        algo = str(args.get("algo", "lora")).strip().lower()
        kind, why = LYCORIS.get(algo, ("lora", f"LyCORIS' {algo} is not a kind animad knows; read as a LoRA"))
        where = f"{module.origin} with --network_args algo={algo}"
    else:
        kind, why = MODULES.get(name, ("lora", f"{name} is not a network module animad knows; read as a LoRA"))
        where = module.origin if module else ""
    if why and (kind, name) != ("lora", "networks.lora"):
        out.problems.append(f"{where}: {why}; job.yaml says network.type: {kind}")
    elif why:
        out.notes.append(f"{where}: {why}")
    return kind


def translate_network(take, sources: Sources, out, job_keys: set[str], comment_of, default_comment) -> None:
    module, args_flag = take("network_module"), take("network_args")
    args = key_values(args_flag.value, args_flag.origin, out.problems) if args_flag else {}
    kind = kind_of(module, args, out)
    if "network.type" in job_keys:
        comment = comment_of(module) if module else f"sd-scripts' Anima LoRA ({ANIMA_LORA}), without " \
                                                    "--network_module"
        if "algo" in args:
            comment += f"; {sources.arg_origins.get('network_args algo') or 'algo=' + str(args['algo'])}"
        out.set("network.type", kind, comment)

    def arg_comment(key: str) -> str:
        return sources.arg_origins.get(f"network_args {key}") or f"{comment_of(args_flag)} ({key})"

    dim, alpha = take("network_dim"), take("network_alpha")
    full = str(args.get("lokr_full_matrix", args.get("full_matrix", ""))).lower() == "true"
    value = dim.value if dim else 4
    comment = comment_of(dim) if dim else "sd-scripts' default: lora_anima uses 4 without --network_dim"
    if kind == "lokr" and full and value < MAX_DIM:
        # the fork's lokr_full_matrix=True: full w2 matrices, which network.dim asks for by being large
        comment = f"{comment}; {args_flag.origin if args_flag else ''} lokr_full_matrix: full w2 matrices"
        value = MAX_DIM
    elif value > MAX_DIM:
        out.problems.append(f"{dim.origin}: network.dim is at most {MAX_DIM} here; job.yaml says {MAX_DIM}")
        value = MAX_DIM
    out.set("network.dim", value, comment, default_for="network_dim")
    out.set("network.alpha", alpha.value if alpha else 1.0, comment_of(alpha) if alpha else
            default_comment("network_alpha"), default_for="network_alpha")
    if kind == "lokr" and "network.factor" in job_keys:
        factor_key = "factor" if "factor" in args else "lokr_factor" if "lokr_factor" in args else None
        if factor_key:
            try:
                out.set("network.factor", int(args[factor_key]), arg_comment(factor_key))
            except (TypeError, ValueError):
                out.problems.append(f"{args_flag.origin}: {factor_key}={args[factor_key]!r} is not a whole number; "
                                    "network.factor stays -1 (the balanced split)")
        else:
            out.set("network.factor", -1, "sd-scripts' and LyCORIS' default (no factor in --network_args): the "
                                          "balanced split")
    dropout = take("network_dropout")
    if dropout is not None:
        out.set("network.dropout", dropout.value, comment_of(dropout))
    for key, value in args.items():
        if key in ("algo", "lokr_full_matrix", "full_matrix") or (key in ("factor", "lokr_factor") and
                                                                  kind == "lokr"):
            continue
        if key in ("rank_dropout", "module_dropout"):
            out.set(f"network.{key}", float(value), arg_comment(key))
        elif key == "dropout":
            if dropout is None:
                out.set("network.dropout", float(value), arg_comment(key))
            else:
                out.unmapped.append(Unmapped(f"--network_args {key}", args_flag.origin, SHADOWED,
                                             "--network_dropout is given and is used"))
        elif key == "train_llm_adapter":
            out.set("network.train_llm_adapter", str(value).lower() == "true", arg_comment(key))
        elif key in ("factor", "lokr_factor"):
            out.unmapped.append(Unmapped(f"--network_args {key}", args_flag.origin, NO_EQUIVALENT,
                                         f"a LoKr setting; this network is {kind}"))
        elif key == "verbose":
            out.unmapped.append(Unmapped(f"--network_args {key}", args_flag.origin, SUPERSEDED,
                                         "animad logs the modules it trains"))
        elif key in ("exclude_patterns", "include_patterns"):
            out.unmapped.append(Unmapped(f"--network_args {key}", args_flag.origin, NO_EQUIVALENT,
                                         "network.include/exclude take regexes on animad's module names; "
                                         "translate them by hand"))
        elif ARG_REASONS.get(key):
            label = sources.arg_origins.get(f"network_args {key}") or args_flag.origin
            is_off = value in (False, 0, "False", "false", "0", None, "")
            out.unmapped.append(Unmapped(f"--network_args {key}", label, SAME if is_off else NO_EQUIVALENT,
                                         "off, as here" if is_off else ARG_REASONS[key]))
        else:
            out.unmapped.append(Unmapped(f"--network_args {key}", sources.arg_origins.get(
                f"network_args {key}") or args_flag.origin, NO_EQUIVALENT, f"animad's {kind} has no such option"))
