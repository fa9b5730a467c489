"""The lesson notebooks' shared helpers, their exercise checks and the reference solutions.

lessons/NN_name.ipynb      the lessons (run in class on a GPU, at home on a laptop CPU)
lessons/common.py          FAST mode, the lesson's data, one `fit` call for a training run, `report`
lessons/checks_NN.py       each lesson's exercise checks: EXERCISES maps a notebook name to its check
lessons/solutions/NN.py    reference solutions, tested to pass the checks (look only after trying!)
"""
