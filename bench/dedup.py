"""Near-duplicate removal benchmark: datasketch as documented vs `synth dedup`.

    .venv/bin/python bench/dedup.py --docs 100000            # both, same input
    .venv/bin/python bench/dedup.py --docs 1000000 --skip-reference
    .venv/bin/python bench/dedup.py --docs 20000 --shingle-study

Builds a seeded Chinese corpus (documents of 100–500 characters from a vocabulary of
common words, some sharing template sentences) with injected near-copies (character
edits, sentence drops and swaps, punctuation / full- and half-width / spacing
changes), writes it as parquet, then runs in separate processes:

(a) the reference use of datasketch, as its docs show it: one MinHash(num_perm=128)
    per document fed shingle by shingle with `update`, MinHashLSH(threshold=0.8,
    num_perm=128), query then insert (a document with a match is a duplicate of the
    smallest matching id and is not inserted);
(b) `synth dedup` end to end (a fresh process: start-up, read, dedup, write), once per
    executor (`--executors`, default local then ray), and again on the first `--small-docs`
    documents: the fixed cost.

Both see the same shingles (character 5-grams of the normalised text). Printed:
docs/s of each and the ratio, recall on injected pairs whose true Jaccard is
≥ 0.85 (a pair is caught when the output no longer holds both), precision (share of removed
rows whose `duplicate_of` really has Jaccard ≥ 0.7 with them), and peak memory
(PSS summed over the process tree, sampled every 0.2 s, so Ray's raylet, workers and
shared object store are counted once).

The machine is shared: run long benchmarks in the background and expect timing noise.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# ---------------------------------------------------------------- corpus

# Common, harmless words and phrases; sentences are random fillings of patterns.
SUBJECTS = (
    "我们 大家 研究人员 学生们 老师 社区居民 志愿者 工程师 医生 农民 企业 政府部门 图书馆 博物馆 "
    "城市管理者 年轻人 老年人 家长 孩子们 科学家 记者 作者 读者 游客 司机 厨师 设计师 团队 公司 学校 "
    "医院 银行 工厂 平台 网站 用户 消费者 观众 运动员 教练 演员 音乐家 画家 程序员 律师 会计 护士 邮递员 "
    "快递员 村民 市民 专家 委员会 协会 俱乐部 实验室 研究所 基金会"
).split()
VERBS = (
    "讨论 研究 分析 关注 改进 组织 参加 完成 准备 整理 记录 分享 学习 介绍 推广 支持 提高 保护 "
    "建设 设计 测试 评估 规划 安排 管理 处理 解决 发现 了解 探索 总结 调整 优化 维护 检查 展示 "
    "开展 举办 制定 落实 鼓励 帮助 培养 提供 收集 比较 观察 描述 解释 推动"
).split()
OBJECTS = (
    "公共交通 城市绿地 社区服务 图书资源 健康知识 环境保护 数据安全 课程内容 实验结果 研究方法 "
    "工作计划 项目进度 产品质量 用户体验 市场需求 季度报告 年度目标 培训课程 阅读习惯 运动方案 "
    "饮食结构 睡眠质量 天气变化 农业技术 灌溉系统 交通规则 安全规范 应急预案 文化活动 传统节日 "
    "历史文物 艺术作品 音乐比赛 体育赛事 旅游路线 餐饮服务 物流网络 能源消耗 水资源 垃圾分类 "
    "空气质量 森林资源 海洋生态 野生动物 候鸟迁徙 气候数据 人工智能 机器学习 模型评测 软件系统 "
    "网络服务 隐私政策 用户反馈 客户投诉 合作方案 志愿活动 社区讲座 读书分享 科普展览 防灾演练 "
    "远程课堂 教学资源 考试安排 奖学金 实习机会 职业规划 团队协作 沟通方式 会议记录 预算方案 "
    "设备维护 仓库管理 生产流程 包装设计 广告创意 品牌形象 售后服务 支付方式 交通拥堵 停车问题 "
    "自行车道 步行街 老旧小区 公园设施 儿童乐园 养老服务 医疗资源 药品管理 疫苗接种 体检报告"
).split()
ADJECTIVES = (
    "新的 重要的 详细的 完整的 合理的 有效的 长期的 基本的 主要的 具体的 公开的 稳定的 清晰的 "
    "简单的 复杂的 实用的 可靠的 透明的 公平的 安全的 便捷的 灵活的 系统的 全面的 科学的"
).split()
ADVERBS = "认真地 积极地 仔细地 逐步 共同 及时 持续 定期 主动 进一步 不断 重新 尽快 充分 广泛".split()
TIMES = (
    "今天 昨天 上周 本月 今年 去年 最近 目前 周末 早上 下午 晚上 春天 夏天 秋天 冬天 第一季度 "
    "第二季度 2023年 2024年 假期期间 会议之后 项目初期 年底之前"
).split()
PLACES = (
    "在会议室里 在社区中心 在图书馆 在实验室 在公园里 在学校 在办公室 在线上平台 在城市东部 "
    "在乡村地区 在展览馆 在体育馆 在车站附近 在河岸边 在山区学校"
).split()
LATIN = "AI 5G APP GDP CPU Wi-Fi PDF USB LED GPS".split()
CONNECTIVES = "因此 同时 此外 但是 所以 然而 另外 而且 总之 首先 其次 最后".split()
PATTERNS = (
    "{t}，{s}{a}{v}了{j}{o}",
    "{s}{p}{a}{v}{o}，并{v2}了{o2}",
    "{c}，{s}认为{o}需要{a}{v}",
    "为了{v}{o}，{s}{t}{v2}了{j}{o2}",
    "{s}计划在{t}{v}{n}项{o}",
    "{o}的{v}工作由{s}负责，{c}{o2}也得到了{v2}",
    "{s}通过{l}等方式{v}{o}",
    "关于{o}，{s}{p}提出了{n}条{j}建议",
    "{t}{s}{v}的{o}{c}得到了大家的{v2}",
    "{s}希望{a}{v}{o}和{o2}",
)


def _sentence(rng: random.Random) -> str:
    return rng.choice(PATTERNS).format(
        t=rng.choice(TIMES), s=rng.choice(SUBJECTS), a=rng.choice(ADVERBS), v=rng.choice(VERBS),
        v2=rng.choice(VERBS), j=rng.choice(ADJECTIVES), o=rng.choice(OBJECTS), o2=rng.choice(OBJECTS),
        c=rng.choice(CONNECTIVES), p=rng.choice(PLACES), n=rng.randint(2, 99), l=rng.choice(LATIN),
    )


END_MARKS = "。。。。！？；"
TEMPLATES = None  # filled lazily: shared opening/closing sentences


def _templates(rng_seed: int) -> list[tuple[list[str], list[str]]]:
    rng = random.Random(rng_seed)
    return [([_sentence(rng) for _ in range(2)], [_sentence(rng)]) for _ in range(200)]


def _document(rng: random.Random, templates) -> list[str]:
    """A document as a list of sentences (each with its end mark), 100–500 characters."""
    target = rng.randint(100, 500)
    sentences: list[str] = []
    tail: list[str] = []
    if rng.random() < 0.15:  # shares boilerplate with other documents (a hard negative)
        head, tail = rng.choice(templates)
        sentences = [s + "。" for s in head]
        tail = [s + "。" for s in tail]
    while sum(map(len, sentences + tail)) < target - 10:
        sentences.append(_sentence(rng) + rng.choice(END_MARKS))
    doc = sentences + tail
    while sum(map(len, doc)) > 500 and len(doc) > 2:
        doc.pop(len(doc) // 2)
    return doc


_FULLWIDTH = {c: chr(ord(c) + 0xFEE0) for c in "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"}
_PUNCT_SWAP = {"。": ".", "，": ",", "！": "!", "？": "?", "；": ";", "、": ","}


def _format_change(rng: random.Random, text: str) -> str:
    """Only punctuation, full/half width and spacing: equal after normalisation."""
    choice = rng.randrange(3)
    if choice == 0:
        return "".join(_PUNCT_SWAP.get(c, c) for c in text)
    if choice == 1:
        return "".join(_FULLWIDTH.get(c, c) for c in text)
    return "".join(c + (" " if rng.random() < 0.05 else "") for c in text)


def _char_edits(rng: random.Random, text: str, count: int) -> str:
    chars = list(text)
    alphabet = "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面而方后多定行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两体制机当使点从业本去把性好应开它合还因由其些然前外天政四日那社义事平形相全表间样与关各重新线内数正心反你明看原又么利比或但质气第向道命此变条只没结解问意建月公无系军很情者最立代想已通并提直题党程展五果料象员革位入常文总次品式活设及管特件长求老头基资边流路级少图山统接知较将组见计别她手角期根论运农指几九区强放决西被干做必战先回则任取据处理府研质"
    for _ in range(count):
        i = rng.randrange(len(chars))
        op = rng.randrange(3)
        if op == 0:
            chars[i] = rng.choice(alphabet)
        elif op == 1:
            chars.insert(i, rng.choice(alphabet))
        elif len(chars) > 1:
            chars.pop(i)
    return "".join(chars)


def _near_copy(rng: random.Random, sentences: list[str]) -> tuple[str, str]:
    kind = rng.choices(["format", "chars", "drop", "swap", "drop+chars"], weights=[2, 4, 2, 1, 1])[0]
    doc = list(sentences)
    if kind in ("drop", "drop+chars") and len(doc) > 3:
        doc.pop(rng.randrange(len(doc)))
    if kind == "swap" and len(doc) > 2:
        i = rng.randrange(len(doc) - 1)
        doc[i], doc[i + 1] = doc[i + 1], doc[i]
    text = "".join(doc)
    if kind in ("chars", "drop+chars"):
        text = _char_edits(rng, text, rng.randint(1, max(1, len(text) // 60)))
    if kind in ("format", "swap") or rng.random() < 0.3:
        text = _format_change(rng, text)
    return text, kind


def build_corpus(n_docs: int, seed: int, path: Path, copy_share: float = 0.25) -> dict:
    """Write `path` (parquet: id, text) and `path`.pairs.parquet (copy, source, kind)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    templates = _templates(seed + 1)
    n_copies = int(n_docs * copy_share)
    n_sources = n_docs - n_copies
    texts: list[str] = []
    sources: list[list[str]] = []
    for _ in range(n_sources):
        doc = _document(rng, templates)
        sources.append(doc)
        texts.append("".join(doc))
    pairs = []
    for _ in range(n_copies):
        src = rng.randrange(n_sources)
        text, kind = _near_copy(rng, sources[src])
        pairs.append((len(texts), src, kind))
        texts.append(text)
    order = list(range(len(texts)))
    rng.shuffle(order)  # ids in shuffled order: a copy may have a lower id than its source
    position = {old: new for new, old in enumerate(order)}
    ids = [f"doc-{i:07d}" for i in range(len(texts))]
    table = pa.table({"id": ids, "text": [texts[old] for old in order]})
    pq.write_table(table, path, row_group_size=20_000)
    pq.write_table(
        pa.table(
            {
                "copy": [ids[position[c]] for c, _, _ in pairs],
                "source": [ids[position[s]] for _, s, _ in pairs],
                "kind": [k for _, _, k in pairs],
            }
        ),
        str(path) + ".pairs.parquet",
    )
    return {"docs": len(texts), "copies": n_copies, "text_bytes": sum(len(t.encode()) for t in texts)}


# ---------------------------------------------------------------- runs (separate processes)


def run_reference(input_path: Path, result_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasketch import MinHash, MinHashLSH

    from synth.dedup.text import normalise

    started = time.perf_counter()
    table = pq.read_table(input_path)
    lsh = MinHashLSH(threshold=0.8, num_perm=128)
    removed, dup_of = [], []
    for doc_id, text in zip(table["id"].to_pylist(), table["text"].to_pylist()):
        norm = normalise(text)
        m = MinHash(num_perm=128)
        for k in range(max(len(norm) - 4, 1)):
            m.update(norm[k : k + 5].encode("utf8"))
        found = lsh.query(m)
        if found:
            removed.append(doc_id)
            dup_of.append(min(found))
        else:
            lsh.insert(doc_id, m)
    pq.write_table(pa.table({"id": removed, "duplicate_of": dup_of}), result_path)
    print(json.dumps({"seconds": time.perf_counter() - started, "bands": lsh.b, "rows": lsh.r}))


def run_synth(input_path: Path, out: Path, executor: str = "auto") -> None:
    started = time.perf_counter()
    from synth.dedup import DedupConfig
    from synth.dedup.command import run_dedup_command

    code = run_dedup_command(input_path, "text", "id", 0.8, out, config=DedupConfig(executor=executor))
    print(json.dumps({"seconds": time.perf_counter() - started, "code": code}))


class PeakMemory:
    """Peaks of the summed PSS and summed RSS of a process and all its descendants.

    PSS splits shared pages (Ray's object store, shared libraries) between the
    processes that map them, so its sum counts them once; the RSS sum counts them
    once per process and overstates a multi-process run.
    """

    def __init__(self, pid: int, interval: float = 0.2):
        import psutil

        self.proc = psutil.Process(pid)
        self.peak = 0
        self.peak_rss = 0
        self.cpu: dict[int, float] = {}  # pid -> user + system seconds, last seen
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            pss = rss = 0
            try:
                procs = [self.proc] + self.proc.children(recursive=True)
            except psutil.Error:
                break
            for p in procs:
                try:
                    info = p.memory_full_info()
                    pss += info.pss
                    rss += info.rss
                    times = p.cpu_times()
                    self.cpu[p.pid] = times.user + times.system
                except psutil.Error:
                    pass
            self.peak = max(self.peak, pss)
            self.peak_rss = max(self.peak_rss, rss)
            self._stop.wait(self.interval)

    def stop(self) -> tuple[int, int, float]:
        self._stop.set()
        self._thread.join()
        return self.peak, self.peak_rss, sum(self.cpu.values())


def timed_process(args: list[str], env: dict | None = None) -> tuple[float, tuple[int, int, float], dict]:
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, __file__, *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env=env, start_new_session=True,
    )
    meter = PeakMemory(proc.pid)
    out, _ = proc.communicate()
    wall = time.perf_counter() - started
    peak = meter.stop()
    if proc.returncode != 0:
        raise SystemExit(f"{args[0]} run failed with exit code {proc.returncode}:\n{out}")
    lines = [line for line in out.splitlines() if line.startswith("{")]
    return wall, peak, json.loads(lines[-1]) if lines else {}


# ---------------------------------------------------------------- evaluation


def _gram_set(text: str) -> frozenset[str]:
    from synth.dedup.text import normalise

    norm = normalise(text)
    return frozenset(norm[k : k + 5] for k in range(max(len(norm) - 4, 1)))


def true_jaccard(a: str, b: str) -> float:
    sa, sb = _gram_set(a), _gram_set(b)
    return len(sa & sb) / len(sa | sb) if sa or sb else 1.0


def evaluate(texts: dict[str, str], pairs, removed_ids: list[str], dup_of: list[str]) -> dict:
    removed = set(removed_ids)
    hits = total = 0
    for copy, source, j in pairs:
        if j >= 0.85:  # caught: the output no longer holds both of them
            total += 1
            hits += copy in removed or source in removed
    good = sum(true_jaccard(texts[r], texts[d]) >= 0.7 for r, d in zip(removed_ids, dup_of))
    return {
        "removed": len(removed_ids),
        "recall@J>=0.85": hits / total if total else float("nan"),
        "pairs@J>=0.85": total,
        "precision@J>=0.7": good / len(removed_ids) if removed_ids else float("nan"),
    }


QUESTION_PATTERNS = (
    "如何{v}{o}", "{o}的{j}方法有哪些", "为什么{s}需要{v}{o}", "请介绍一下{o}的基本情况",
    "{s}应该怎样{v}{o}", "有没有关于{o}的{j}建议", "{t}{s}在{o}方面做了什么", "{o}和{o2}有什么区别",
)


def _question_pairs(rng: random.Random, n: int) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Short questions: (light variant pairs, slot-variant pairs = different questions)."""
    light, different = [], []
    for _ in range(n):
        pattern = rng.choice(QUESTION_PATTERNS)
        slots = dict(v=rng.choice(VERBS), o=rng.choice(OBJECTS), o2=rng.choice(OBJECTS), j=rng.choice(ADJECTIVES),
                     s=rng.choice(SUBJECTS), t=rng.choice(TIMES))
        q = pattern.format(**slots) + "？"
        edit = rng.randrange(3)
        if edit == 0:
            variant = _format_change(rng, q)
        elif edit == 1:
            variant = _char_edits(rng, q, 1)
        else:
            variant = q[:-1] + rng.choice(["呢？", "吗？", "啊？"])
        light.append((q, variant))
        key = rng.choice(sorted(k for k in slots if "{" + k + "}" in pattern))
        other = dict(slots)
        pool = {"v": VERBS, "o": OBJECTS, "o2": OBJECTS, "j": ADJECTIVES, "s": SUBJECTS, "t": TIMES}[key]
        while other[key] == slots[key]:
            other[key] = rng.choice(pool)
        different.append((q, pattern.format(**other) + "？"))
    return light, different


def shingle_study(n_docs: int, seed: int, workdir: Path) -> None:
    """Char vs word n-grams: how well Jaccard separates near-copies from different texts, and speed."""
    from collections import defaultdict

    import numpy as np
    import pyarrow.parquet as pq

    from synth.dedup import DedupConfig, candidate_probability
    from synth.dedup.minhash import MinHasher
    from synth.dedup.text import jaccard, normalise, shingle_sets, shingles

    path = workdir / f"corpus-{n_docs}-{seed}.parquet"
    if not path.exists():
        build_corpus(n_docs, seed, path)
    table = pq.read_table(path)
    texts = dict(zip(table["id"].to_pylist(), table["text"].to_pylist()))
    pairs = pq.read_table(str(path) + ".pairs.parquet").to_pylist()
    rng = random.Random(seed)
    ids = list(texts)
    norm = {i: normalise(t) for i, t in texts.items()}
    copy_ids = {p["copy"] for p in pairs}
    light = [(p["copy"], p["source"]) for p in pairs if p["kind"] in ("format", "chars", "swap", "drop")]
    randoms = [tuple(rng.sample(ids, 2)) for _ in range(5000)]
    by_head = defaultdict(list)  # distinct documents sharing template sentences
    for i in ids:
        if i not in copy_ids:
            by_head[norm[i][:20]].append(i)
    hard = [(g[0], g[k]) for g in by_head.values() for k in range(1, len(g))][:5000]
    q_light, q_diff = _question_pairs(rng, 3000)
    q_light = [(normalise(a), normalise(b)) for a, b in q_light]
    q_diff = [(normalise(a), normalise(b)) for a, b in q_diff]
    bands, rows = DedupConfig().banding()
    print(f"shingle study, threshold 0.8, LSH b={bands} r={rows}. Documents (100-500 chars, {n_docs} generated): "
          f"{len(light)} light near-copies, {len(hard)} template-sharing distinct pairs, {len(randoms)} random pairs. "
          f"Questions (10-40 chars): {len(q_light)} light variants, {len(q_diff)} one-slot-different questions.")
    print(f"{'':<8}{'docs: copies':>13}{'template':>10}{'random':>12}{'questions: light':>18}{'different':>11}"
          f"{'docs/s':>9}")
    print(f"{'':<8}{'J>=0.8':>13}{'J>=0.8':>10}{'P(cand)':>12}{'J>=0.8':>18}{'J>=0.8':>11}{'1 core':>9}")
    hasher = MinHasher(128, 1)
    sample = [norm[i] for i in ids[:4000]]
    for kind, n in [("char", 2), ("char", 3), ("char", 4), ("char", 5), ("char", 6), ("word", 1), ("word", 2), ("word", 3)]:
        shingles(sample[:50], kind, n)  # warm-up (jieba's dictionary)
        t0 = time.perf_counter()
        hasher.signatures(*shingles(sample, kind, n))
        speed = len(sample) / (time.perf_counter() - t0)

        def j(a: str, b: str) -> float:
            sa, sb = shingle_sets([a, b], kind, n)
            return jaccard(sa, sb)

        cj = np.array([j(norm[a], norm[b]) for a, b in light])
        hj = np.array([j(norm[a], norm[b]) for a, b in hard])
        rj = np.array([j(norm[a], norm[b]) for a, b in randoms])
        p_cand = float(np.mean([candidate_probability(x, bands, rows) for x in rj]))
        qlj = np.array([j(a, b) for a, b in q_light])
        qdj = np.array([j(a, b) for a, b in q_diff])
        print(f"{kind + '-' + str(n):<8}{(cj >= 0.8).mean():>13.3f}{(hj >= 0.8).mean():>10.4f}{p_cand:>12.2e}"
              f"{(qlj >= 0.8).mean():>18.3f}{(qdj >= 0.8).mean():>11.3f}{speed:>9,.0f}")


# ---------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=100_000, help="documents in the corpus (default 100000)")
    ap.add_argument("--seed", type=int, default=20261128)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/synth-bench-dedup"))
    ap.add_argument("--skip-reference", action="store_true", help="run only synth dedup (e.g. at 1M documents)")
    ap.add_argument("--reference-docs-per-s", type=float, help="with --skip-reference: reference speed measured before")
    ap.add_argument("--shingle-study", action="store_true", help="compare char and word n-grams instead")
    ap.add_argument("--executors", default="local,ray",
                    help="synth dedup's executors to run, in order (default local,ray: one machine's processes, "
                         "then Ray Data, which is what `synth dedup` ran before the local executor)")
    ap.add_argument("--small-docs", type=int, default=200,
                    help="also time each executor on the first N documents: the fixed cost (0: skip)")
    ap.add_argument("--run", choices=["reference", "synth"], help=argparse.SUPPRESS)
    ap.add_argument("--executor", default="auto", help=argparse.SUPPRESS)
    ap.add_argument("--input", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.run == "reference":
        return run_reference(args.input, args.result)
    if args.run == "synth":
        return run_synth(args.input, args.result, args.executor)

    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.shingle_study:
        return shingle_study(args.docs, args.seed, args.workdir)

    import shutil

    import pyarrow.parquet as pq

    corpus = args.workdir / f"corpus-{args.docs}-{args.seed}.parquet"
    if not corpus.exists() or not Path(str(corpus) + ".pairs.parquet").exists():
        t0 = time.perf_counter()
        info = build_corpus(args.docs, args.seed, corpus)
        print(f"corpus: {info['docs']} docs, {info['copies']} injected near-copies, "
              f"{info['text_bytes'] / 1e6:.0f} MB of text, built in {time.perf_counter() - t0:.0f}s → {corpus}")
    table = pq.read_table(corpus)
    texts = dict(zip(table["id"].to_pylist(), table["text"].to_pylist()))
    text_mb = sum(len(t.encode()) for t in texts.values()) / 1e6
    del table
    raw_pairs = pq.read_table(str(corpus) + ".pairs.parquet").to_pylist()
    pairs = [(p["copy"], p["source"], true_jaccard(texts[p["copy"]], texts[p["source"]])) for p in raw_pairs]
    print(f"corpus: {len(texts)} docs, {text_mb:.0f} MB of UTF-8 text, {len(pairs)} injected pairs "
          f"({sum(j >= 0.85 for *_, j in pairs)} with true Jaccard ≥ 0.85)")
    print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (shared machine: timings are noisy)")

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    results = {}
    if not args.skip_reference:
        ref_out = args.workdir / f"reference-{args.docs}.parquet"
        wall, peak, info = timed_process(["--run", "reference", "--input", str(corpus), "--result", str(ref_out)], env)
        removed = pq.read_table(ref_out)
        results["datasketch (reference)"] = (wall, peak, evaluate(texts, pairs, removed["id"].to_pylist(), removed["duplicate_of"].to_pylist()))
        print(f"reference LSH: b={info.get('bands')} r={info.get('rows')}")
    executors = [e.strip() for e in args.executors.split(",") if e.strip()]
    small = args.workdir / f"corpus-{args.small_docs}-{args.seed}.parquet"
    if args.small_docs:
        pq.write_table(pq.read_table(corpus).slice(0, args.small_docs), small)
    fixed = {}
    for executor in executors:
        name = f"synth dedup ({executor})"
        synth_out = args.workdir / f"synth-out-{args.docs}-{executor}"
        shutil.rmtree(synth_out, ignore_errors=True)
        wall, peak, info = timed_process(["--run", "synth", "--input", str(corpus), "--result", str(synth_out),
                                          "--executor", executor], env)
        if info.get("code") != 0:
            raise SystemExit(f"{name} failed: {info}")
        removed = pq.read_table(synth_out / "removed", columns=["id", "duplicate_of"])
        results[name] = (wall, peak, evaluate(texts, pairs, removed["id"].to_pylist(), removed["duplicate_of"].to_pylist()))
        if args.small_docs:
            small_out = args.workdir / f"synth-out-{args.small_docs}-{executor}"
            shutil.rmtree(small_out, ignore_errors=True)
            fixed[name] = timed_process(["--run", "synth", "--input", str(small), "--result", str(small_out),
                                         "--executor", executor], env)[0]

    print(f"\n{'':<24}{'docs':>9}{'wall s':>9}{'docs/s':>9}{'CPU s':>9}{'docs/CPU-s':>11}{'removed':>9}{'recall':>8}"
          f"{'precision':>10}{'peak PSS MB':>13}{'(RSS sum)':>11}")
    for name, (wall, (pss, rss, cpu), ev) in results.items():
        print(f"{name:<24}{len(texts):>9}{wall:>9.1f}{len(texts) / wall:>9,.0f}{cpu:>9.1f}{len(texts) / cpu:>11,.0f}"
              f"{ev['removed']:>9}{ev['recall@J>=0.85']:>8.4f}{ev['precision@J>=0.7']:>10.4f}"
              f"{pss / 2**20:>13,.0f}{rss / 2**20:>11,.0f}")
    for name, result in results.items():
        if name.startswith("datasketch"):
            continue
        synth_rate = len(texts) / result[0]
        if "datasketch (reference)" in results:
            ref_rate = len(texts) / results["datasketch (reference)"][0]
            ref_cpu_rate = len(texts) / results["datasketch (reference)"][1][2]
            print(f"{name}: speed-up {synth_rate / ref_rate:.1f}x the reference's docs/s (wall clock), "
                  f"{len(texts) / result[1][2] / ref_cpu_rate:.1f}x its docs per CPU-second")
        elif args.reference_docs_per_s:
            print(f"{name}: speed-up {synth_rate / args.reference_docs_per_s:.1f}x the reference's docs/s "
                  f"(reference not run here: {args.reference_docs_per_s:,.0f} docs/s measured at a smaller size)")
    for name, wall in fixed.items():
        print(f"{name}: fixed cost {wall:.1f} s wall for {args.small_docs} documents (a fresh process: imports, "
              "start-up, read, dedup, write)")
    print(f"input: {text_mb:.0f} MB of text; load average at end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
