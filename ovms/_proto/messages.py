"""The protocol modules ovms serves, one namespace per .proto file (see ``ovms._proto.proto_module``)."""
from ovms._proto import proto_module

kserve = proto_module("kserve/grpc_predict_v2.proto")

tf_types = proto_module("tensorflow/core/framework/types.proto")
tf_tensor = proto_module("tensorflow/core/framework/tensor.proto")
tf_meta_graph = proto_module("tensorflow/core/protobuf/meta_graph.proto")
tfs_predict = proto_module("tensorflow_serving/apis/predict.proto")
tfs_get_model_metadata = proto_module("tensorflow_serving/apis/get_model_metadata.proto")
tfs_get_model_status = proto_module("tensorflow_serving/apis/get_model_status.proto")
tfs_model_management = proto_module("tensorflow_serving/apis/model_management.proto")
tfs_prediction_service = proto_module("tensorflow_serving/apis/prediction_service.proto")
tfs_model_service = proto_module("tensorflow_serving/apis/model_service.proto")

health = proto_module("grpc/health/v1/health.proto")
reflection_v1 = proto_module("grpc/reflection/v1/reflection.proto")
reflection_v1alpha = proto_module("grpc/reflection/v1alpha/reflection.proto")
