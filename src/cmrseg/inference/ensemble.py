"""Ensembles: several trained models whose class probabilities are averaged.

Training several networks (seeds or folds) and averaging their probabilities is the usual way to
turn spare training time into accuracy (nnU-Net ensembles its five folds). Every member keeps
its own preprocessing, heart-centred crop, flips and gate; its gated probabilities are taken back
to the input's grid and averaged there (so members may use different canvases), the
classifier's presence probabilities are averaged over the members that have one, and the
argmax is cleaned up once.

An ensemble is named on the command line (``cmrseg segment --model RUN_A RUN_B``) or by a folder
holding ``ensemble.json``, which may be shipped like a model::

    {"members": ["seed0", "seed1", "seed2"], "postprocess": "clean"}

with member model folders relative to it (``postprocess`` optional: the first member's choice
otherwise). An optional ``second_opinion`` (:class:`SecondOpinion`)::

    "second_opinion": {"landmarks": [0.29, ...], "landmark_window_mm": 120, "above_uncertainty": 0.117}

has ``cmrseg segment`` segment a study again on histogram-standardised intensities
(:func:`cmrseg.data.preprocessing.standardise_histogram`, the members' own networks) when the
share of its masks the networks expect to be wrong exceeds ``above_uncertainty``, and keep the
result they are surer of (``experiments/fit_intensity_landmarks.py --second-opinion`` fits it on
the training data).
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from cmrseg.data.preprocessing import PreprocessConfig
from cmrseg.data.volume import Volume
from cmrseg.errors import CmrsegError, InputError
from cmrseg.inference.options import InferenceOptions
from cmrseg.inference.postprocessing import POSTPROCESS
from cmrseg.inference.predictor import ENSEMBLE_FILE, Prediction, Predictor, resolve_model


def read_ensemble(folder: str | Path) -> tuple[list[Path], dict]:
    """The member model folders an ensemble folder's ``ensemble.json`` names (resolved against the
    folder) and the description itself; one :class:`InputError` naming the file when it is not one."""
    spec_path = Path(folder) / ENSEMBLE_FILE
    try:
        spec = json.loads(spec_path.read_text())
        names = [str(m) for m in spec["members"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(spec_path, f"invalid ensemble description ({type(exc).__name__}: {exc})") from None
    return [(Path(folder) / n).resolve() for n in names], spec


@dataclass(frozen=True)
class SecondOpinion:
    """The same networks on histogram-standardised intensities, asked when a study's uncertainty
    (the share of its ED and ES masks the networks expect to be wrong) exceeds ``above``:
    another sequence's or scanner's intensity curve moves the networks' boundaries and raises
    their uncertainty, and standardising the stack's histogram onto the training stacks' undoes
    much of it (docs/decisions.md, rule 26)."""

    predictor: "EnsemblePredictor"
    above: float

    @classmethod
    def from_spec(cls, spec: dict, members: list[Predictor], postprocess: str, where: Path) -> "SecondOpinion":
        try:
            landmarks = tuple(float(v) for v in spec["landmarks"])
            window = spec.get("landmark_window_mm")
            above = float(spec["above_uncertainty"])
            standardised = [copy.copy(m) for m in members]  # the same networks, another preprocessing
            for m in standardised:
                m.preprocess = PreprocessConfig.from_dict({**m.preprocess.to_dict(), "landmarks": landmarks,
                                                           "landmark_window_mm": window})
        except (KeyError, TypeError, ValueError, CmrsegError) as exc:
            raise InputError(where, f"invalid second_opinion ({type(exc).__name__}: {exc})") from None
        return cls(EnsemblePredictor(standardised, postprocess, path=f"{where} (second opinion: standardised)"), above)


def _member_label(m: Predictor) -> str:
    """A member's shipped name, else its folder's name (its architecture name when it has no folder)."""
    shipped = (m.meta.get("shipped") or {}).get("name")
    return shipped or (Path(str(m.meta["path"])).name if m.meta.get("path") else m.name)


class EnsemblePredictor:
    """Averages the probabilities of ``members`` (:class:`Predictor`), with the interface
    ``cmrseg segment`` uses (``predict_volume``, ``name``, ``meta``, ``device``, ``options``,
    ``postprocess``, ``amp``). ``postprocess``: the clean-up of the averaged mask (``auto``: the
    first member's)."""

    def __init__(self, members: list[Predictor], postprocess: str = "auto", path: str | None = None,
                 source: str = "ensemble"):
        if not members:
            raise CmrsegError("an ensemble needs at least one member model")
        maps = {json.dumps(m.meta.get("label_map"), sort_keys=True) for m in members}
        if len(maps) > 1:
            raise CmrsegError("ensemble members disagree on the label map: " + ", ".join(m.meta.get("path", m.name) for m in members))
        if postprocess == "auto":
            postprocess = members[0].postprocess
        if postprocess not in POSTPROCESS:
            raise CmrsegError(f"unknown post-processing {postprocess!r}; choose from auto, {', '.join(POSTPROCESS)}")
        self.members = members
        self.postprocess = postprocess
        self.second_opinion: SecondOpinion | None = None
        paths = [str(m.meta.get("path", m.name)) for m in members]
        self.meta = {"model": self.name, "source": source, "path": path or "; ".join(paths), "members": paths,
                     "protocol": members[0].meta.get("protocol"), "backend": members[0].meta.get("backend"),
                     "label_map": members[0].meta.get("label_map")}

    @classmethod
    def from_folder(cls, folder: str | Path, options: InferenceOptions = InferenceOptions(),
                    source: str = "folder") -> "EnsemblePredictor":
        """A folder with ``ensemble.json`` (module docstring); every member runs with ``options``."""
        folder = Path(folder)
        paths, spec = read_ensemble(folder)
        members = [Predictor.from_path(p, replace(options, postprocess="auto")) for p in paths]
        postprocess = options.postprocess if options.postprocess != "auto" else spec.get("postprocess", "auto")
        ensemble = cls(members, postprocess, path=str(folder), source=source)
        if spec.get("second_opinion") and options.second_opinion == "auto":
            ensemble.second_opinion = SecondOpinion.from_spec(spec["second_opinion"], members, ensemble.postprocess,
                                                              folder / ENSEMBLE_FILE)
        return ensemble

    @property
    def name(self) -> str:
        return f"ensemble of {len(self.members)} ({', '.join(_member_label(m) for m in self.members)})"

    @property
    def device(self) -> torch.device:
        return self.members[0].device

    @property
    def amp(self):
        return self.members[0].amp

    @property
    def options(self) -> InferenceOptions:
        """The options every member runs with (the first member's, merged with its model.json)."""
        return replace(self.members[0].options, postprocess=self.postprocess)

    @property
    def gate(self) -> str:
        gates = {m.gate for m in self.members}
        return gates.pop() if len(gates) == 1 else "per member"

    @property
    def tta(self) -> bool:
        return all(m.tta for m in self.members)

    @property
    def preprocess(self):
        """The members' one canvas (:meth:`predict_canvas` needs one; members may differ otherwise)."""
        canvases = {m.preprocess for m in self.members}
        if len(canvases) > 1:
            raise CmrsegError("the ensemble's members use different canvases: " + ", ".join(map(str, canvases)))
        return canvases.pop()

    def predict_canvas(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Mean of the members' canvas probabilities ``[S, 4, C, C]`` of one canvas stack ``x``
        ``[S, 1, C, C]`` (:meth:`Predictor.predict_canvas`), and their mean presence; ``x`` on
        :attr:`preprocess`'s canvas."""
        total, presence = None, []
        for m in self.members:
            probs, cls = m.predict_canvas(x)
            total = probs if total is None else total + probs
            if cls is not None:
                presence.append(cls)
        return total / len(self.members), torch.stack(presence).mean(dim=0) if presence else None

    def predict_probabilities(self, volume: Volume) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Mean of the members' probabilities ``[S, 4, H, W]`` (input grid) and presence ``[S, 3]``."""
        total, presence = None, []
        for m in self.members:
            probs, cls = m.predict_probabilities(volume)
            total = probs if total is None else total + probs
            if cls is not None:
                presence.append(cls)
        return total / len(self.members), torch.stack(presence).mean(dim=0) if presence else None

    def predict_volume(self, volume: Volume, keep_probabilities: bool = False) -> Prediction:
        """Segment one stack with every member; the mask is in the volume's own grid (with the
        averaged probabilities when ``keep_probabilities``)."""
        t0 = time.perf_counter()
        return Prediction.from_probabilities(*self.predict_probabilities(volume), self.postprocess, t0,
                                             keep_probabilities)

    def predict_volumes(self, volumes: list[Volume], keep_probabilities: bool = False) -> list[Prediction]:
        """Segment every stack of a study, one at a time (the members are heart-centred)."""
        return [self.predict_volume(v, keep_probabilities) for v in volumes]


def load_predictor(spec: str | Path | list | tuple | None = None,
                   options: InferenceOptions = InferenceOptions()) -> Predictor | EnsemblePredictor:
    """``--model``: nothing (the default model), one shipped name or folder (a model, or an
    ensemble folder with ``ensemble.json``), or several, which make an ensemble; every network
    runs with ``options``."""
    specs = list(spec) if isinstance(spec, (list, tuple)) else [spec]
    if len(specs) > 1:
        members = [Predictor.load(s, replace(options, postprocess="auto")) for s in specs]
        return EnsemblePredictor(members, options.postprocess, source="command line")
    folder, source = resolve_model(specs[0])
    if (folder / ENSEMBLE_FILE).is_file():
        return EnsemblePredictor.from_folder(folder, options, source)
    return Predictor.load(specs[0], options)
