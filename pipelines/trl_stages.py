"""TRL's trainers inside a Ray Train worker, shared by the pipelines that train with them (TRI,
StreamMA): the arguments both SFTConfig and DPOConfig take, and SFT on prompt/completion rows.

`train` is the pipeline's train section: a `Workers` with `batch_size`, `weight_decay`,
`max_grad_norm` and `gradient_checkpointing`.
"""

from __future__ import annotations


def trl_arguments(train, seed: int, output_dir: str, steps: int, lr: float, warmup: int) -> dict:
    """Keywords shared by TRL's SFTConfig and DPOConfig: this run's schedule and strategy."""
    from workloads.strategies import trainer_arguments

    return dict(output_dir=output_dir, max_steps=steps, per_device_train_batch_size=train.batch_size, learning_rate=lr,
                lr_scheduler_type="cosine", warmup_steps=warmup, weight_decay=train.weight_decay, logging_steps=max(1, steps // 5),
                save_strategy="no", report_to=[], seed=seed, data_seed=seed, use_cpu=not train.use_gpu,
                dataloader_num_workers=0, disable_tqdm=True, gradient_checkpointing=train.gradient_checkpointing,
                # every parameter of these full fine-tunes gets a gradient: DDP need not search the graph for unused ones
                ddp_find_unused_parameters=False,
                **trainer_arguments(train.strategy, train.zero_stage, train.offload, train.max_grad_norm))


def sft(train, seed: int, max_length: int, model, tokenizer, rows: list[dict], steps: int, lr: float, warmup: int,
        scratch: str) -> float:
    """TRL's SFTTrainer on prompt/completion rows (loss on the completion only); the final loss."""
    import datasets
    from ray.train.huggingface.transformers import prepare_trainer
    from trl import SFTConfig, SFTTrainer

    from workloads.strategies import release_from_trainer

    args = SFTConfig(**trl_arguments(train, seed, scratch, steps, lr, warmup), completion_only_loss=True, max_length=max_length)
    trainer = prepare_trainer(SFTTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(rows),
                                         processing_class=tokenizer))
    loss = float(trainer.train().training_loss)
    release_from_trainer(model)
    return loss
