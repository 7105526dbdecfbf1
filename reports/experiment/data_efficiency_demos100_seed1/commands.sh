# A second seed of the data-efficiency curve's 100-demo point (results.json here, at c66374f). Run from the
# repository root after make results and make data-efficiency (their datasets and backbone in outputs/results).
set -e
export MUJOCO_GL=egl HF_HUB_OFFLINE=1
P=.venv/bin/python
R=outputs/results
$P -m policies.train_policy experiment=data_efficiency train.policy.backbone=$R/backbone/ours train.policy.seed=1 train.policy.out_dir=$R/policy/ours-demos100-seed1 train.policy.cotrain.weight=1.0 train.policy.demos=100
$P -m policies.train_policy experiment=data_efficiency train.policy.backbone=null train.policy.seed=1 train.policy.out_dir=$R/policy/scratch_fm-demos100-seed1 train.policy.demos=100
$P -m sim.evaluate experiment=data_efficiency 'eval.policies=[ours,scratch_fm]' policies.ours.path=$R/policy/ours-demos100-seed1/pretrained_model policies.scratch_fm.path=$R/policy/scratch_fm-demos100-seed1/pretrained_model eval.report_dir=$R/eval/demos100-seed1 'eval.protocols=[visual_matching]' eval.episodes_per_task=25 eval.save_videos=false
