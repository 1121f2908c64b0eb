"""The released code the recipes mirror, pinned to the commit that was read, and one way to cite it.

Every recipe value carries a citation ``"<owner>/<repo>@<sha7> <path>:L<lines> (<what>)"`` made by
``cite``; the full commit of each repository is here, once. The repositories were read with git
(``git show <sha>:<path>``) on 2026-12-02; line numbers are those of that commit.

| key         | repository                                        | commit (HEAD when read)                  |
|-------------|---------------------------------------------------|------------------------------------------|
| fast        | locuslab/fast_adversarial (Wong et al. 2020)      | 54f728755e71857b632882ba6d6cef22f56e2172 |
| trades      | yaodongyu/TRADES (Zhang et al. 2019)              | 6e8e11b7c281371c2f027ffadfbaea80361f09de |
| trades-fix  | yaodongyu/TRADES, commit "fix adjust_learning_rate" | c56d2f281112b4a003d0c25555e58a93fb070db9 |
| free        | ashafahi/free_adv_train (Shafahi et al. 2019, TF)  | c42cac2c4711bc65363f836a42e883b6a65a4c40 |
| free-pt     | mahyarnajibi/FreeAdversarialTraining (ImageNet)    | e185c84b1cf7495e59ac8453953572483541f424 |
| rice        | locuslab/robust_overfitting (Rice et al. 2020)    | c47a25c5e00c8b2bb35488d962c04dd771b7e9af |
| madry-mnist | MadryLab/mnist_challenge (Madry et al. 2018)      | 3ee3643c4a8c59458d8c191b84027f4a6cbd9580 |
| madry-cifar | MadryLab/cifar10_challenge (Madry et al. 2018)    | f15682d9f1e26eb47a2d3b371ef8b6c7abcf6276 |
| mmr         | max-andr/provable-robustness-max-linear-regions (MMR, 2019) | 28200b663986310021c70c5a98c959a943731f66 |
| autoattack  | fra31/auto-attack (Croce & Hein 2020), README tables | a39220048b3c9f2cca9a4d3a54604793c68eca7e |
| nfgsm       | pdejorge/N-FGSM (de Jorge et al. 2022)            | 0a9e4f040b89a4bcd85763a34dea7866416927a2 |
| gradalign   | tml-epfl/understanding-fast-adv-training (GradAlign) | ceed49440bfc35a676375b783eaba5940e583bcc |
| mart        | YisenWang/MART (Wang et al. 2020)                 | 2d83e17b381dd2ee52223695e517bf6d5ff09c2c |
| awp         | csdongxian/AWP (Wu, Xia, Wang 2020)               | a7acf5d842fccf1bbb4b91644352ce157d370a26 |

Values no reference fixes (a data set no paper used, the harness's own val split) are cited with
``harness(...)`` or ``derived(...)``: the text says what was decided and why.
"""

from __future__ import annotations

from typing import Dict, Tuple

REPOS: Dict[str, Tuple[str, str]] = {
    "fast": ("locuslab/fast_adversarial", "54f728755e71857b632882ba6d6cef22f56e2172"),
    "trades": ("yaodongyu/TRADES", "6e8e11b7c281371c2f027ffadfbaea80361f09de"),
    "trades-fix": ("yaodongyu/TRADES", "c56d2f281112b4a003d0c25555e58a93fb070db9"),
    "free": ("ashafahi/free_adv_train", "c42cac2c4711bc65363f836a42e883b6a65a4c40"),
    "free-pt": ("mahyarnajibi/FreeAdversarialTraining", "e185c84b1cf7495e59ac8453953572483541f424"),
    "rice": ("locuslab/robust_overfitting", "c47a25c5e00c8b2bb35488d962c04dd771b7e9af"),
    "madry-mnist": ("MadryLab/mnist_challenge", "3ee3643c4a8c59458d8c191b84027f4a6cbd9580"),
    "madry-cifar": ("MadryLab/cifar10_challenge", "f15682d9f1e26eb47a2d3b371ef8b6c7abcf6276"),
    "mmr": ("max-andr/provable-robustness-max-linear-regions", "28200b663986310021c70c5a98c959a943731f66"),
    "autoattack": ("fra31/auto-attack", "a39220048b3c9f2cca9a4d3a54604793c68eca7e"),
    "nfgsm": ("pdejorge/N-FGSM", "0a9e4f040b89a4bcd85763a34dea7866416927a2"),
    "gradalign": ("tml-epfl/understanding-fast-adv-training", "ceed49440bfc35a676375b783eaba5940e583bcc"),
    "mart": ("YisenWang/MART", "2d83e17b381dd2ee52223695e517bf6d5ff09c2c"),
    "awp": ("csdongxian/AWP", "a7acf5d842fccf1bbb4b91644352ce157d370a26"),
}


def cite(ref: str, path: str, lines: str | int, what: str = "") -> str:
    """``cite("fast", "CIFAR10/train_fgsm.py", 27, "--lr-max 0.2")`` ->
    ``"locuslab/fast_adversarial@54f7287 CIFAR10/train_fgsm.py:L27 (--lr-max 0.2)"``."""
    repo, sha = REPOS[ref]
    return f"{repo}@{sha[:7]} {path}:L{lines}" + (f" ({what})" if what else "")


def harness(what: str) -> str:
    """A value the harness sets where no reference fixes it; ``what`` says what and why."""
    return f"harness: {what}"


def derived(what: str) -> str:
    """A value derived from a reference for a setting the reference did not cover."""
    return f"derived: {what}"


def repositories_cited(sources: Dict[str, str]) -> Dict[str, str]:
    """``{"owner/repo@sha7": full sha}`` for every repository a source string cites."""
    out: Dict[str, str] = {}
    for text in sources.values():
        for repo, sha in REPOS.values():
            if f"{repo}@{sha[:7]}" in text:
                out[f"{repo}@{sha[:7]}"] = sha
    return dict(sorted(out.items()))
