"""The training stages of a model update: ``adapt_teachers``, ``teacher_outputs``, ``distil``,
``calibrate`` (the recipes decide which run; see ``config.py``). Each is skipped when an earlier
run with the same inputs finished it (``run.py``)."""
from __future__ import annotations

from pathlib import Path

from distill.update.run import Run

# ------------------------------------------------------------------------------- adapt_teachers


def stage_adapt_teachers(run: Run) -> None:
    from distill.update.teachers import TeacherPlan, adapt_teacher

    cfg, rep = run.cfg, run.rep
    if cfg.recipe != "full":
        rep.skipped("adapt_teachers", {"kd": "recipe kd: the shipped teachers as they are",
                                       "finetune": "recipe finetune: no teachers",
                                       "threshold": "recipe threshold: no training"}[cfg.recipe])
        return
    folder = run.work / "teachers"
    adapted = [folder / f"{Path(p).stem}.pt" for p in run.teachers]
    if run.done("adapt_teachers") and all(p.is_file() for p in adapted):
        run.skip_done("adapt_teachers")
        run.teachers = adapted
        return
    run.begin("adapt_teachers", folder, f"{len(run.teachers)} teachers, layers {cfg.teacher_layers}, "
                                        f"{cfg.teacher_epochs} epochs")
    plan = TeacherPlan(cfg.teacher_epochs, cfg.teacher_lr, cfg.teacher_layers, cfg.batch_size, cfg.seed, cfg.max_steps)
    train = run.data["adapt"] + run.data["replay_teachers"]
    run.teachers = [p if p.is_file() else adapt_teacher(Path(src), train, run.data["val"], plan, folder, rep)
                    for src, p in zip(run.teachers, adapted)]
    run.mark("adapt_teachers")
    rep.done("adapt_teachers")


# ------------------------------------------------------------------------------ teacher_outputs


def _student_train_samples(run: Run) -> list:
    d = run.data
    if run.cfg.recipe == "finetune":
        return d["adapt"] + d["replay_teachers"]
    return d["site_train"] + d["replay_student"]


def _teacher(run: Run):
    """What the student distils from: the (adapted) ensemble, mixed with the base student's own
    outputs when the run keeps what the base knew (``lwf``, ``lwf_site``: ``anchor.py``)."""
    from distill.models.ensemble import TeacherEnsemble

    ensemble = TeacherEnsemble.from_checkpoints([str(p) for p in run.teachers], average="logits")
    cfg = run.cfg
    if not (cfg.lwf or cfg.lwf_site):
        return ensemble
    from distill.models.checkpoint import load_classifier
    from distill.update.anchor import AnchoredTargets

    base = load_classifier(run.base.checkpoint).float()
    return AnchoredTargets(ensemble, base, {s.sha256 for s in run.data["replay_student"]}, cfg.lwf, cfg.lwf_site,
                           cfg.temperature)


def stage_teacher_outputs(run: Run) -> None:
    from distill.update.student import open_cache, precompute_teacher_outputs, train_dataset

    cfg, rep = run.cfg, run.rep
    if cfg.recipe not in ("full", "kd"):
        rep.skipped("teacher_outputs", f"recipe {cfg.recipe}: no teachers")
        return
    if run.done("teacher_outputs"):
        run.skip_done("teacher_outputs")
        return
    run.begin("teacher_outputs", None)   # the cache is keyed by the teachers' weights: never stale
    teacher = _teacher(run)
    cache = open_cache(run.work / "teacher_cache.sqlite", teacher)
    try:
        ds = train_dataset(_student_train_samples(run), student_input_size(run), cfg.seed, cfg.teacher_views)
        stats = precompute_teacher_outputs(teacher, cache, ds, cfg.epochs, rep)
    finally:
        cache.close()
    run.mark("teacher_outputs")
    rep.done("teacher_outputs", f"{stats['views']} views ({stats['cached']} already cached)")


def student_input_size(run: Run) -> int:
    """The candidate's input side: ``input_size`` when set, else the base's."""
    return run.cfg.input_size or run.base.manifest.input.size


# -------------------------------------------------------------------------------------- distil


def stage_distil(run: Run) -> None:
    from distill.models.checkpoint import save_checkpoint
    from distill.data.torch_dataset import PatchDataset
    from distill.update.student import StudentPlan, distil, open_cache, train_dataset

    cfg, rep = run.cfg, run.rep
    out = run.work / "student.pt"
    if cfg.recipe == "threshold":
        rep.skipped("distil", "recipe threshold: the base weights as they are")
        return
    if run.done("distil") and out.is_file():
        run.skip_done("distil")
        return
    run.begin("distil", run.work / "student", f"recipe {cfg.recipe}, {cfg.epochs} epochs")
    plan = StudentPlan(cfg.epochs, cfg.lr, cfg.alpha, cfg.temperature, cfg.batch_size, cfg.seed, cfg.max_steps,
                       freeze_bn=cfg.student_bn == "frozen")
    size = student_input_size(run)
    if size != run.base.manifest.input.size:
        rep.log(f"the student learns at {size} px inputs (the base's {run.base.manifest.input.size} px): about "
                f"{(size / run.base.manifest.input.size) ** 2:.1f}× the compute per tile")
    teacher = cache = None
    if cfg.recipe in ("full", "kd"):
        teacher = _teacher(run)
        cache = open_cache(run.work / "teacher_cache.sqlite", teacher)
    try:
        model = distil(run.base.checkpoint, train_dataset(_student_train_samples(run), size, cfg.seed, cfg.teacher_views),
                       PatchDataset(run.data["val"], size), plan, run.work / "student", rep,
                       teacher=teacher, cache=cache, input_size=size)
    finally:
        if cache is not None:
            cache.close()
    if cfg.weight_mix == "auto":
        _mix_with_base(run, model, size)
    model.meta.extra = {**model.meta.extra, "tiling": run.base.tiling}
    save_checkpoint(out, model, info={"recipe": cfg.recipe, "parent": f"{run.base.name}-{run.base.version}"})
    run.mark("distil")
    rep.done("distil")


def _mix_with_base(run: Run, model, size: int) -> None:
    """WiSE-FT: the candidate becomes λ·trained + (1−λ)·base (``anchor.choose_mix``: best site
    validation MCC under the golden constraint), recorded in update.json's recipe."""
    from distill.data.torch_dataset import PatchDataset
    from distill.models.checkpoint import load_classifier
    from distill.update.anchor import choose_mix

    base = load_classifier(run.base.checkpoint).float()
    golden = run.data["golden"]
    choice = choose_mix(base, model, PatchDataset(run.data["val"], size), PatchDataset(golden, size),
                        base_golden_ds=PatchDataset(golden, base.meta.input_size), calibrate=run.cfg.calibrate)
    run.state["weight_mix"] = choice.to_dict()
    run.rep.log(f"weight mix: {choice.reason}")


# ----------------------------------------------------------------------------------- calibrate


def stage_calibrate(run: Run) -> None:
    from distill.models.checkpoint import load_classifier, save_checkpoint
    from distill.data.torch_dataset import PatchDataset
    from distill.training.loop import predict
    from distill.update.threshold import ThresholdDecision, bake_threshold, decide

    cfg, rep = run.cfg, run.rep
    out = run.work / "candidate.pt"
    trained = run.work / "student.pt"
    source = trained if trained.is_file() else run.base.checkpoint
    if run.done("calibrate") and out.is_file():
        run.threshold = run.state.get("threshold")
        run.skip_done("calibrate")
        return
    run.begin("calibrate", None)
    model = load_classifier(source).float()
    if cfg.calibrate:
        size = model.meta.input_size
        val_p, val_y = predict(model, PatchDataset(run.data["val"], size))
        rep.check()
        gold_p, gold_y = predict(model, PatchDataset(run.data["golden"], size))
        decision = decide(val_y, val_p[:, 1], gold_y, gold_p[:, 1])
        if decision.adopted:
            bake_threshold(model, decision.threshold, crack_index=model.meta.label_names.index("crack"))
    else:
        decision = ThresholdDecision(False, 0.5, None, None, reason="switched off (calibrate=False)")
    run.threshold = decision.to_dict()
    model.meta.extra = {**model.meta.extra, "tiling": run.base.tiling, "threshold": run.threshold}
    save_checkpoint(out, model, info={"recipe": cfg.recipe, "parent": f"{run.base.name}-{run.base.version}",
                                      "threshold": run.threshold})
    run.state["threshold"] = run.threshold
    run.mark("calibrate")
    rep.done("calibrate", decision.reason if not decision.adopted else f"adopted: {decision.reason}")
