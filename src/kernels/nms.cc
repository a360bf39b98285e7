// Class-aware greedy NMS of one image, for src/detections.py (called through ctypes, not a
// MindSpore op). The same result as the Python batched_nms, bit for bit: the same candidates
// (score > min_score in float32), the same float64 pixel boxes and the same IoU test, written
// in the same operations (build.sh compiles this file with -ffp-contract=off: no fused
// multiply-add). Inside a class it orders by score descending; where two candidates that the
// greedy pass reaches have exactly the same score, their order is numpy's argsort's (the
// reference's), which this file cannot reproduce: it then returns -1 and the caller runs
// batched_nms, which follows that order.
//
// Why it is fast: greedy NMS over a sorted list needs only the prefix that yields
// max_per_class kept boxes, so each class is ordered in chunks (nth_element, then a sort of
// the chunk) and stops when the class is full, instead of sorting all of its candidates.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "simd.h"

namespace {

struct Box {
  double y1, x1, y2, x2, area;
};

// The kept boxes of a class, one array per coordinate (the test below vectorises over them).
struct Kept {
  std::vector<double> y1, x1, y2, x2, area;
  void clear() {
    for (auto *v : {&y1, &x1, &y2, &x2, &area}) v->clear();
  }
  void push(const Box &b) {
    y1.push_back(b.y1);
    x1.push_back(b.x1);
    y2.push_back(b.y2);
    x2.push_back(b.x2);
    area.push_back(b.area);
  }
  int64_t size() const { return static_cast<int64_t>(y1.size()); }
};

constexpr int64_t kChunk = 256;

struct Candidate {
  float score;
  int32_t anchor;
};

// Score descending, then anchor ascending: a strict total order, so a chunk's prefix is exact.
// Ties are found and handed back (see above), so the anchor only makes the order total.
inline bool Before(const Candidate &a, const Candidate &b) {
  return a.score > b.score || (a.score == b.score && a.anchor < b.anchor);
}

// Whether a kept box suppresses ``b``: IoU above the threshold, tested as
// !(inter <= threshold * (area_b + area_kept - inter)), the Python batched_nms' expression.
SIMD_CLONES bool Suppressed(const Box &b, const double *y1, const double *x1, const double *y2,
                            const double *x2, const double *area, int64_t n, double threshold) {
  int hit = 0;
#pragma omp simd reduction(| : hit)
  for (int64_t i = 0; i < n; ++i) {
    const double h = (b.y2 < y2[i] ? b.y2 : y2[i]) - (b.y1 > y1[i] ? b.y1 : y1[i]);
    const double w = (b.x2 < x2[i] ? b.x2 : x2[i]) - (b.x1 > x1[i] ? b.x1 : x1[i]);
    const double inter = (h > 0.0 ? h : 0.0) * (w > 0.0 ? w : 0.0);
    hit |= !(inter <= threshold * (b.area + area[i] - inter));
  }
  return hit != 0;
}

}  // namespace

extern "C" {

// boxes (anchors, 4) normalised (ymin, xmin, ymax, xmax); scores (anchors, classes), class 0
// the background (never a detection). Writes the kept (anchor, class) pairs, class by class,
// each class in score order, and returns how many (at most max_per_class * (classes - 1)),
// or -1 when a class has two candidates of equal score among those its greedy pass reaches.
int64_t SsdClassNms(const float *boxes, const float *scores, int64_t anchors, int64_t classes,
                    double height, double width, float min_score, double iou_threshold,
                    int64_t max_per_class, int plus_one, int64_t *kept_anchor,
                    int64_t *kept_class) {
  std::vector<std::vector<Candidate>> candidates(classes);
  for (int64_t a = 0; a < anchors; ++a) {
    const float *row = scores + a * classes;
    for (int64_t c = 1; c < classes; ++c)
      if (row[c] > min_score) candidates[c].push_back({row[c], static_cast<int32_t>(a)});
  }
  const double extra = plus_one ? 1.0 : 0.0;
  auto pixel_box = [&](int64_t a) {
    const float *b = boxes + a * 4;
    Box box{static_cast<double>(b[0]) * height, static_cast<double>(b[1]) * width,
            static_cast<double>(b[2]) * height, static_cast<double>(b[3]) * width, 0.0};
    box.y2 += extra;
    box.x2 += extra;
    box.area = (box.y2 - box.y1) * (box.x2 - box.x1);
    return box;
  };
  int64_t count = 0;
  Kept kept;
  for (int64_t c = 1; c < classes; ++c) {
    std::vector<Candidate> &list = candidates[c];
    kept.clear();
    auto begin = list.begin();
    auto next = list.begin();   // the first candidate the greedy pass has not reached
    while (begin != list.end() && kept.size() < max_per_class) {
      auto end = list.end() - begin > kChunk ? begin + kChunk : list.end();
      if (end != list.end()) std::nth_element(begin, end - 1, list.end(), Before);
      std::sort(begin, end, Before);
      for (auto it = begin; it != end && kept.size() < max_per_class; ++it) {
        if (it != list.begin() && (it - 1)->score == it->score) return -1;
        next = it + 1;
        const Box box = pixel_box(it->anchor);
        if (!Suppressed(box, kept.y1.data(), kept.x1.data(), kept.y2.data(), kept.x2.data(),
                        kept.area.data(), kept.size(), iou_threshold)) {
          kept.push(box);
          kept_anchor[count] = it->anchor;
          kept_class[count] = c;
          ++count;
        }
      }
      begin = end;
    }
    if (next != list.begin()) {   // a candidate not reached that ties with the last reached
      const float last = (next - 1)->score;
      for (auto it = next; it != list.end(); ++it)
        if (it->score == last) return -1;
    }
  }
  return count;
}

}  // extern "C"
