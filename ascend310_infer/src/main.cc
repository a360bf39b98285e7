// SSD-ResNet34 inference in C++: a folder of images -> <stem>_0.bin (boxes) and <stem>_1.bin
// (scores) per image, plus the average inference latency.
//
// Engines:
//   * OpenCV DNN on an ONNX export (default; CPU). Export with
//     `python export.py --file_format ONNX --opencv true` and pass the .opencv.onnx file.
//   * MindSpore's C++ API on a MINDIR export, built with -DWITH_MINDSPORE=ON where that SDK
//     exists (MindSpore Lite / Ascend toolkits); not available from pip.
//
// Result files are named by the image's file name without its last extension (shot.1.jpg ->
// shot.1_0.bin); two images of one stem (a.jpg, a.png) are refused before any work.
//
// Preprocessing is evaluation's: decode (pixels as stored, EXIF orientation ignored), BGR ->
// RGB, bilinear resize to HxW, ImageNet mean/std, HWC -> CHW. Outputs are the exported graph's:
// boxes (8732, 4) normalised (ymin, xmin, ymax, xmax), scores (8732, C) sigmoid, both float32,
// written raw (row-major).
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <dirent.h>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>
#include <string>
#include <sys/stat.h>
#include <vector>

#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#ifdef WITH_MINDSPORE
#include "include/api/context.h"
#include "include/api/model.h"
#include "include/api/serialization.h"
#include "include/api/types.h"
#else
#include <opencv2/dnn.hpp>
#endif

namespace {

const float kMean[3] = {123.675f, 116.28f, 103.53f};
const float kStd[3] = {58.395f, 57.12f, 57.375f};

struct Options {
  std::string model_path;
  std::string dataset_path;
  std::string result_dir = "./result_Files";
  std::string time_dir = "./time_Result";
  std::string device_type = "CPU";
  int device_id = 0;
  int batch_size = 1;
  int image_height = 300;
  int image_width = 300;
};

void Usage() {
  std::cerr << "usage: main --model_path MODEL (.opencv.onnx, or .mindir with WITH_MINDSPORE)\n"
               "            --dataset_path DIR [--batch_size N] [--image_height 300]\n"
               "            [--image_width 300] [--result_dir ./result_Files]\n"
               "            [--time_dir ./time_Result] [--device_type CPU|GPU|Ascend]\n"
               "            [--device_id 0]   (--mindir_path is the same as --model_path)\n";
}

bool ParseInt(const std::string &text, int *value, long lowest = 1) {
  char *end = nullptr;
  long parsed = std::strtol(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || parsed < lowest || parsed > 100000) return false;
  *value = static_cast<int>(parsed);
  return true;
}

bool ParseArgs(int argc, char **argv, Options *options) {
  std::map<std::string, std::string> values;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    std::string key, value;
    size_t eq = arg.find('=');
    if (arg.rfind("--", 0) != 0) {
      std::cerr << "error: unexpected argument '" << arg << "'\n";
      return false;
    }
    if (eq != std::string::npos) {
      key = arg.substr(2, eq - 2);
      value = arg.substr(eq + 1);
    } else if (i + 1 < argc) {
      key = arg.substr(2);
      value = argv[++i];
    } else {
      std::cerr << "error: " << arg << " needs a value\n";
      return false;
    }
    values[key] = value;
  }
  for (const auto &item : values) {
    const std::string &key = item.first, &value = item.second;
    bool ok = true;
    if (key == "model_path" || key == "mindir_path") options->model_path = value;
    else if (key == "dataset_path") options->dataset_path = value;
    else if (key == "result_dir") options->result_dir = value;
    else if (key == "time_dir") options->time_dir = value;
    else if (key == "device_type") options->device_type = value;
    else if (key == "device_id") ok = ParseInt(value, &options->device_id, 0);
    else if (key == "batch_size") ok = ParseInt(value, &options->batch_size);
    else if (key == "image_height") ok = ParseInt(value, &options->image_height);
    else if (key == "image_width") ok = ParseInt(value, &options->image_width);
    else {
      std::cerr << "error: unknown flag --" << key << "\n";
      return false;
    }
    if (!ok) {
      std::cerr << "error: --" << key << " expects a whole number (positive; 0 allowed for "
                   "--device_id), got '" << value << "'\n";
      return false;
    }
  }
  if (options->model_path.empty() || options->dataset_path.empty()) {
    std::cerr << "error: --model_path and --dataset_path are required\n";
    return false;
  }
  return true;
}

bool IsImage(const std::string &name) {
  std::string lower = name;
  std::transform(lower.begin(), lower.end(), lower.begin(), ::tolower);
  for (const char *suffix : {".jpg", ".jpeg", ".png", ".bmp"}) {
    std::string s(suffix);
    if (lower.size() > s.size() && lower.compare(lower.size() - s.size(), s.size(), s) == 0)
      return true;
  }
  return false;
}

std::vector<std::string> ListImages(const std::string &folder) {
  std::vector<std::string> files;
  DIR *dir = opendir(folder.c_str());
  if (dir == nullptr) return files;
  while (dirent *entry = readdir(dir)) {
    std::string name = entry->d_name;
    if (name[0] != '.' && IsImage(name)) files.push_back(folder + "/" + name);
  }
  closedir(dir);
  std::sort(files.begin(), files.end());
  return files;
}

// The result files' stem: the file name without its last extension (shot.1.jpg -> shot.1), as
// postprocess.py reads them (os.path.splitext).
std::string Stem(const std::string &path) {
  std::string base = path.substr(path.find_last_of('/') + 1);
  return base.substr(0, base.find_last_of('.'));
}

// Two images whose results would share a stem (a.jpg and a.png): names both, true if any.
bool SharedStem(const std::vector<std::string> &files) {
  std::map<std::string, std::string> seen;
  for (const auto &file : files) {
    auto found = seen.emplace(Stem(file), file);
    if (!found.second) {
      std::cerr << "error: " << found.first->second << " and " << file
                << " would both write " << found.first->first << "_0.bin and "
                << found.first->first << "_1.bin; rename one of them\n";
      return true;
    }
  }
  return false;
}

// Writes one image's CHW float input into `out` (3 * height * width floats). Pixels as stored:
// EXIF orientation is ignored, as MindSpore's Decode in evaluation and predict.py do.
bool Preprocess(const std::string &path, const Options &options, float *out) {
  cv::Mat bgr = cv::imread(path, cv::IMREAD_COLOR | cv::IMREAD_IGNORE_ORIENTATION);
  if (bgr.empty()) return false;
  cv::Mat rgb, resized;
  cv::cvtColor(bgr, rgb, cv::COLOR_BGR2RGB);
  cv::resize(rgb, resized, cv::Size(options.image_width, options.image_height), 0, 0,
             cv::INTER_LINEAR);
  const int plane = options.image_height * options.image_width;
  for (int y = 0; y < options.image_height; ++y) {
    const cv::Vec3b *row = resized.ptr<cv::Vec3b>(y);
    for (int x = 0; x < options.image_width; ++x) {
      for (int c = 0; c < 3; ++c) {
        out[c * plane + y * options.image_width + x] =
            (static_cast<float>(row[x][c]) - kMean[c]) / kStd[c];
      }
    }
  }
  return true;
}

bool WriteBinary(const std::string &path, const float *data, size_t count) {
  std::ofstream file(path, std::ios::binary);
  file.write(reinterpret_cast<const char *>(data), count * sizeof(float));
  return static_cast<bool>(file);
}

// One engine: batch input (B, 3, H, W) -> outputs[0] boxes, outputs[1] scores, each B * rows.
class Engine {
 public:
  bool Load(const Options &options) {
#ifdef WITH_MINDSPORE
    auto context = std::make_shared<mindspore::Context>();
    std::shared_ptr<mindspore::DeviceInfoContext> device;
    if (options.device_type == "Ascend") {
      auto ascend = std::make_shared<mindspore::AscendDeviceInfo>();
      ascend->SetDeviceID(options.device_id);
      device = ascend;
    } else if (options.device_type == "GPU") {
      auto gpu = std::make_shared<mindspore::GPUDeviceInfo>();
      gpu->SetDeviceID(options.device_id);
      device = gpu;
    } else {
      device = std::make_shared<mindspore::CPUDeviceInfo>();
    }
    context->MutableDeviceInfo().push_back(device);
    mindspore::Graph graph;
    if (mindspore::Serialization::Load(options.model_path, mindspore::ModelType::kMindIR,
                                       &graph) != mindspore::kSuccess) {
      return false;
    }
    return model_.Build(mindspore::GraphCell(graph), context) == mindspore::kSuccess;
#else
    if (options.device_type != "CPU") {
      std::cerr << "warning: the OpenCV engine runs on CPU; --device_type "
                << options.device_type << " needs a build with WITH_MINDSPORE\n";
    }
    try {
      net_ = cv::dnn::readNetFromONNX(options.model_path);
    } catch (const cv::Exception &error) {
      std::cerr << error.what() << "\n";
      return false;
    }
    net_.setPreferableBackend(cv::dnn::DNN_BACKEND_OPENCV);
    net_.setPreferableTarget(cv::dnn::DNN_TARGET_CPU);
    names_ = net_.getUnconnectedOutLayersNames();
    return names_.size() == 2;
#endif
  }

  bool Run(std::vector<float> &input, int batch, const Options &options,
           std::vector<std::vector<float>> *outputs) {
#ifdef WITH_MINDSPORE
    auto inputs = model_.GetInputs();
    std::vector<mindspore::MSTensor> feed = {mindspore::MSTensor(
        inputs[0].Name(), mindspore::DataType::kNumberTypeFloat32,
        {batch, 3, options.image_height, options.image_width}, input.data(),
        input.size() * sizeof(float))};
    std::vector<mindspore::MSTensor> results;
    if (model_.Predict(feed, &results) != mindspore::kSuccess || results.size() != 2) return false;
    outputs->clear();
    for (auto &tensor : results) {
      const float *data = static_cast<const float *>(tensor.Data().get());
      outputs->emplace_back(data, data + tensor.ElementNum());
    }
    return true;
#else
    int shape[4] = {batch, 3, options.image_height, options.image_width};
    cv::Mat blob(4, shape, CV_32F, input.data());
    net_.setInput(blob);
    std::vector<cv::Mat> results;
    net_.forward(results, names_);
    outputs->clear();
    // Output order follows the graph; boxes have 4 columns.
    std::sort(results.begin(), results.end(), [](const cv::Mat &a, const cv::Mat &b) {
      return a.size[a.dims - 1] == 4 && b.size[b.dims - 1] != 4;
    });
    for (auto &mat : results) {
      cv::Mat contiguous = mat.isContinuous() ? mat : mat.clone();
      const float *data = contiguous.ptr<float>();
      outputs->emplace_back(data, data + contiguous.total());
    }
    return true;
#endif
  }

 private:
#ifdef WITH_MINDSPORE
  mindspore::Model model_;
#else
  cv::dnn::Net net_;
  std::vector<std::string> names_;
#endif
};

}  // namespace

int main(int argc, char **argv) {
  Options options;
  if (!ParseArgs(argc, argv, &options)) {
    Usage();
    return 2;
  }
  std::vector<std::string> files = ListImages(options.dataset_path);
  if (files.empty()) {
    std::cerr << "error: no .jpg/.jpeg/.png/.bmp images in " << options.dataset_path << "\n";
    return 1;
  }
  if (SharedStem(files)) return 1;
  Engine engine;
  if (!engine.Load(options)) {
    std::cerr << "error: cannot load the model " << options.model_path << "\n";
    return 1;
  }
  mkdir(options.result_dir.c_str(), 0755);
  mkdir(options.time_dir.c_str(), 0755);
  const size_t per_image = 3ul * options.image_height * options.image_width;
  double total_ms = 0;
  int runs = 0, failures = 0;
  for (size_t start = 0; start < files.size(); start += options.batch_size) {
    std::vector<std::string> names;
    std::vector<float> input(per_image * options.batch_size, 0.0f);
    for (size_t i = start; i < files.size() && names.size() < (size_t)options.batch_size; ++i) {
      if (!Preprocess(files[i], options, input.data() + names.size() * per_image)) {
        std::cerr << "error: " << files[i] << " cannot be decoded\n";
        ++failures;
        continue;
      }
      names.push_back(files[i]);
    }
    if (names.empty()) continue;
    std::vector<std::vector<float>> outputs;
    auto begin = std::chrono::steady_clock::now();
    bool ok = engine.Run(input, options.batch_size, options, &outputs);
    auto end = std::chrono::steady_clock::now();
    if (!ok || outputs.size() != 2) {
      std::cerr << "error: inference failed on the batch starting at " << names[0] << "\n";
      return 1;
    }
    total_ms += std::chrono::duration<double, std::milli>(end - begin).count();
    ++runs;
    for (size_t b = 0; b < names.size(); ++b) {
      for (int k = 0; k < 2; ++k) {
        size_t count = outputs[k].size() / options.batch_size;
        std::string path = options.result_dir + "/" + Stem(names[b]) + "_" +
                           std::to_string(k) + ".bin";
        if (!WriteBinary(path, outputs[k].data() + b * count, count)) {
          std::cerr << "error: cannot write " << path << "\n";
          return 1;
        }
      }
    }
  }
  double average = runs ? total_ms / runs : 0.0;
  std::ostringstream line;
  line << "NN inference cost average time: " << average << " ms of infer_count " << runs;
  std::cout << line.str() << " (batch " << options.batch_size << ")" << std::endl;
  std::ofstream(options.time_dir + "/test_perform_static.txt") << line.str() << std::endl;
  return failures ? 1 : 0;
}
